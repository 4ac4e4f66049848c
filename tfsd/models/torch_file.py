"""Reading PyTorch checkpoints (``.pth`` / ``.pt`` / ``.bin``) without torch and without pickle.

`read_torch_file` returns a checkpoint's state dict as NumPy arrays. The two formats
``torch.save`` writes (read in ``torch/serialization.py`` and ``torch/_utils.py``, pytorch/pytorch):

* **zip** (torch ≥ 1.6, the default): a zip archive ``NAME/data.pkl`` (the pickled object),
  ``NAME/data/KEY`` (one raw storage per key), ``NAME/byteorder`` (optional, "little"/"big");
  a storage's persistent id is ``("storage", StorageType, key, location, numel)``.
* **legacy** (``_use_new_zipfile_serialization=False`` and every file before 1.6): five pickles
  in a row — the magic number 0x1950a86a20f9469cfc6c, the protocol version 1001, a sys-info
  dict (``little_endian``), the object (persistent id ``("storage", StorageType, key, location,
  numel, view_metadata)``), the sorted list of storage keys — then, per key in that order, an
  int64 element count and the raw storage bytes.

A pickle is a program: unpickling one calls whatever functions it names. `_SafeUnpickler`
resolves only the names in `_ALLOWED` (tensor rebuild functions, storage types, ``OrderedDict``)
to inert stand-ins of its own, and the whole pickle is scanned for the names it refers to
*before* a single opcode runs: a checkpoint naming anything else (``os.system``, ``builtins.eval``,
a model class…) is refused with an error naming it, and nothing of it executes.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py MAGIC_NUMBER
_LEGACY_PROTOCOL = 1001  # torch/serialization.py PROTOCOL_VERSION
# torch.<X>Storage → element dtype. bfloat16 has no NumPy dtype: read as uint16, widened below.
_STORAGES = {
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "DoubleStorage": "float64",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
}
# Wrapper keys of training checkpoints that hold a state dict (timm's train.py writes
# "state_dict" and "state_dict_ema", DeiT/ConvNeXt "model" and "model_ema").
WRAPPER_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")


class TorchFileError(ValueError):
    """A PyTorch checkpoint that cannot be read safely (unknown global, corrupt, truncated)."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: only its dtype is used."""

    def __init__(self, name: str):
        self.name, self.dtype = name, _STORAGES[name]


class _TensorRef:
    """A tensor still to be cut out of its storage (the arguments of ``_rebuild_tensor_v2``)."""

    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, offset, size, stride, requires_grad=False, hooks=None, *meta):
    del requires_grad, hooks, meta  # training flags and hooks: not weights
    return _TensorRef(storage, offset, size, stride)


def _rebuild_tensor(storage, offset, size, stride):  # torch < 1.0 files
    return _TensorRef(storage, offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *meta):  # an nn.Parameter
    del requires_grad, hooks, meta
    return data


class _Dict(collections.OrderedDict):
    """``collections.OrderedDict``; a state dict's ``_metadata`` attribute is dropped."""

    def __setstate__(self, state):
        del state  # only BUILD calls this; the keys were set by SETITEMS


# The only globals a checkpoint may name, and what each resolves to.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): _Dict,
    **{("torch", name): _StorageType(name) for name in _STORAGES},
}


def _globals_named(data: bytes, where: str) -> list[tuple[str, str]]:
    """Every (module, name) the pickle refers to, found without executing it.

    ``GLOBAL`` carries its name; protocol-4 ``STACK_GLOBAL`` takes two strings from the stack,
    which are followed here through the memo. ``INST``, ``EXT*`` and an unresolvable
    ``STACK_GLOBAL`` are refused (torch writes protocol 2, i.e. ``GLOBAL`` only).
    """
    names, memo, strings = [], {}, []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                module, name = arg.split(" ", 1)
                names.append((module, name))
            elif op.name == "STACK_GLOBAL":
                if len(strings) < 2 or not all(isinstance(s, str) for s in strings[-2:]):
                    raise TorchFileError(f"{where}: a STACK_GLOBAL whose name cannot be checked.")
                names.append((strings[-2], strings[-1]))
            elif op.name in ("INST", "EXT1", "EXT2", "EXT4"):
                raise TorchFileError(f"{where}: refused pickle opcode {op.name} ({arg!r}).")
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name in ("BINGET", "LONG_BINGET", "GET"):
                strings.append(memo.get(arg))
            elif op.name in ("BINPUT", "LONG_BINPUT", "PUT") and strings:
                memo[arg] = strings[-1]
            elif op.name == "MEMOIZE" and strings:
                memo[len(memo)] = strings[-1]
            elif op.name not in ("MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT", "FRAME", "PROTO"):
                strings.append(None)
    except TorchFileError:
        raise
    except Exception as e:  # noqa: BLE001  (pickletools raises ValueError, struct.error, ...)
        raise TorchFileError(f"{where} is truncated or not a PyTorch checkpoint: {e}") from e
    return names


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, persistent_load, where: str):
        refused = sorted({f"{m}.{n}" for m, n in _globals_named(data, where)} - _allowed_names())
        if refused:
            raise TorchFileError(
                f"{where} names Python objects tfsd does not load: {refused}. Only tensors, "
                f"storages and (Ordered)dicts of them are read; nothing was executed. A full "
                f"pickled model or a training checkpoint with other objects must be reduced to "
                f"its state dict where torch is installed."
            )
        super().__init__(io.BytesIO(data))
        self._persistent_load = persistent_load
        self.where = where

    def find_class(self, module: str, name: str):  # a second guard; the scan refused these
        if (module, name) not in _ALLOWED:
            raise TorchFileError(f"{self.where}: refused global {module}.{name}.")
        return _ALLOWED[(module, name)]

    def persistent_load(self, pid):
        return self._persistent_load(pid)


def _allowed_names() -> set[str]:
    return {f"{m}.{n}" for m, n in _ALLOWED}


def _unpickle(data: bytes, persistent_load, where: str) -> Any:
    try:
        return _SafeUnpickler(data, persistent_load, where).load()
    except TorchFileError:
        raise
    except Exception as e:  # noqa: BLE001  (UnpicklingError, EOFError, TypeError, ...)
        raise TorchFileError(f"{where} is truncated or corrupt: {type(e).__name__}: {e}") from e


def _storage_id(pid, where: str) -> tuple[_StorageType, str, int]:
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        raise TorchFileError(f"{where}: unsupported persistent id {str(pid)[:80]}.")
    storage_type, key, numel = pid[1], str(pid[2]), pid[4]
    if not isinstance(storage_type, _StorageType):
        raise TorchFileError(f"{where}: storage {key} has no storage type.")
    if len(pid) == 6 and pid[5] is not None:
        raise TorchFileError(f"{where}: storage views (torch < 0.4 files) are not supported.")
    return storage_type, key, int(numel)


def _array(raw: bytes, dtype: str, numel: int, little: bool, what: str, where: str) -> np.ndarray:
    np_dtype = np.dtype("uint16" if dtype == "bfloat16" else dtype)
    if not little:
        np_dtype = np_dtype.newbyteorder(">")
    if len(raw) != numel * np_dtype.itemsize:
        raise TorchFileError(
            f"{where}: storage {what} holds {len(raw)} bytes, {numel} × {np_dtype.itemsize} "
            f"expected (truncated?)."
        )
    array = np.frombuffer(raw, np_dtype).astype(np_dtype.newbyteorder("="))
    if dtype == "bfloat16":  # bfloat16 is the top half of a float32: widen exactly
        array = (array.astype("uint32") << 16).view("float32")
    return array


def _materialise(obj, storages: Mapping[str, np.ndarray], where: str):
    """Replaces every `_TensorRef` in ``obj`` by a NumPy array (a copy: views become contiguous)."""
    if isinstance(obj, _TensorRef):
        storage = storages[obj.storage]
        size, stride = tuple(int(s) for s in obj.size), tuple(int(s) for s in obj.stride)
        if len(size) != len(stride) or min(size + stride, default=0) < 0:
            raise TorchFileError(f"{where}: bad tensor size {size} / stride {stride}.")
        last = obj.offset + sum((n - 1) * s for n, s in zip(size, stride)) if all(size) else -1
        if obj.offset < 0 or last >= storage.size:
            raise TorchFileError(
                f"{where}: tensor of size {size}, stride {stride}, offset {obj.offset} reaches "
                f"past its storage of {storage.size} elements."
            )
        if not all(size):
            return np.zeros(size, storage.dtype)
        base = storage[obj.offset :]
        strides = tuple(s * storage.itemsize for s in stride)
        return np.lib.stride_tricks.as_strided(base, size, strides, writeable=False).copy()
    if isinstance(obj, dict):
        out = collections.OrderedDict() if isinstance(obj, collections.OrderedDict) else {}
        for k, v in obj.items():
            out[k] = _materialise(v, storages, where)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages, where) for v in obj)
    return obj


def _load_zip(path: str, where: str) -> Any:
    try:
        archive = zipfile.ZipFile(path)
        names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        raise TorchFileError(f"{where} is a damaged zip archive: {e}") from e
    with archive:
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchFileError(f"{where}: a torch zip checkpoint has one NAME/data.pkl.")
        root = pickles[0][: -len("data.pkl")]
        little = True
        if root + "byteorder" in names:
            little = archive.read(root + "byteorder").strip() != b"big"
        storages: dict[str, np.ndarray] = {}

        def load_storage(pid):
            storage_type, key, numel = _storage_id(pid, where)
            if key not in storages:
                try:
                    raw = archive.read(f"{root}data/{key}")
                except (KeyError, zipfile.BadZipFile, OSError) as e:
                    raise TorchFileError(f"{where}: storage {key} unreadable: {e}") from e
                storages[key] = _array(raw, storage_type.dtype, numel, little, key, where)
            return key

        try:
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError) as e:
            raise TorchFileError(f"{where}: {pickles[0]} unreadable: {e}") from e
        obj = _unpickle(data, load_storage, where)
    return _materialise(obj, storages, where)


def _load_legacy(data: bytes, where: str) -> Any:
    stream = io.BytesIO(data)

    def header_pickle(what: str):
        start, end = _pickle_span(stream, where, what)
        return _unpickle(data[start:end], _no_persistent, f"{where} ({what})")

    if header_pickle("magic number") != _MAGIC:
        raise TorchFileError(
            f"{where} is neither a torch zip archive nor a legacy torch.save file (bad magic)."
        )
    if header_pickle("protocol version") != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{where}: unsupported legacy protocol version.")
    sys_info = header_pickle("sys info")
    little = bool(sys_info.get("little_endian", True)) if isinstance(sys_info, dict) else True
    start, end = _pickle_span(stream, where, "the pickled object")
    types: dict[str, tuple[_StorageType, int]] = {}

    def record_storage(pid):
        storage_type, key, numel = _storage_id(pid, where)
        types[key] = (storage_type, numel)
        return key

    obj = _unpickle(data[start:end], record_storage, where)
    stream.seek(end)
    keys = header_pickle("storage keys")
    if not isinstance(keys, list) or set(map(str, keys)) != set(types):
        raise TorchFileError(f"{where}: the storage key list does not match the object's.")
    storages = {}
    for key in map(str, keys):
        storage_type, numel = types[key]
        head = stream.read(8)
        if len(head) != 8:
            raise TorchFileError(f"{where} is truncated (at storage {key}).")
        (count,) = struct.unpack("<q" if little else ">q", head)
        itemsize = 2 if storage_type.dtype == "bfloat16" else np.dtype(storage_type.dtype).itemsize
        if count != numel:
            raise TorchFileError(f"{where}: storage {key} has {count} elements, {numel} expected.")
        raw = stream.read(count * itemsize)
        storages[key] = _array(raw, storage_type.dtype, count, little, key, where)
    return _materialise(obj, storages, where)


def _pickle_span(stream: io.BytesIO, where: str, what: str) -> tuple[int, int]:
    """[start, end) of the pickle at the stream's position, found by scanning (nothing runs)."""
    start = stream.tell()
    try:  # genops reports absolute positions (stream.tell()) and stops after STOP
        end = [p for op, _, p in pickletools.genops(stream) if op.name == "STOP"][-1] + 1
    except Exception as e:  # noqa: BLE001  (ValueError: pickle exhausted before STOP, ...)
        raise TorchFileError(f"{where} is truncated or not a torch checkpoint ({what}).") from e
    stream.seek(end)
    return start, end


def _no_persistent(pid):
    raise TorchFileError(f"unexpected persistent id {str(pid)[:80]} in a header pickle.")


def read_torch_file(path: str | os.PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
    """The state dict of a PyTorch checkpoint as NumPy arrays, read without executing anything.

    Args:
      path: a ``torch.save`` file (``.pth``, ``.pt``, ``.bin``), zip or legacy format.
      key: the entry of a training checkpoint that holds the weights (e.g. "state_dict_ema");
        None: the file itself when it is a dict of tensors, else the one wrapper entry of
        `WRAPPER_KEYS` that holds a dict of tensors (several: an error asking for ``key``).
        A leading ``module.`` (``DataParallel``) is removed from every name.

    Returns:
      ``{name: array}`` in the file's order; float16/float32/float64/int tensors keep their
      dtype, bfloat16 is widened exactly to float32. Views and shared storages become
      independent contiguous copies.

    Raises:
      FileNotFoundError: no file at ``path``.
      TorchFileError (a ValueError): the file names a Python object other than tensors,
        storages and OrderedDict (nothing of it executed), is truncated or corrupt, or holds no
        state dict.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No PyTorch checkpoint at {path!r}.")
    where = repr(path)
    if zipfile.is_zipfile(path):
        obj = _load_zip(path, where)
    else:
        with open(path, "rb") as f:
            obj = _load_legacy(f.read(), where)
    return _state_dict(obj, key, where)


def _is_state_dict(obj) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def _state_dict(obj, key: str | None, where: str) -> dict[str, np.ndarray]:
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(map(str, obj)) if isinstance(obj, dict) else type(obj).__name__
            raise TorchFileError(f"{where} has no entry {key!r} (it has {keys}).")
        obj = obj[key]
    elif not _is_state_dict(obj) and isinstance(obj, dict):
        found = [k for k in WRAPPER_KEYS if _is_state_dict(obj.get(k))]
        if len(found) > 1:
            raise TorchFileError(
                f"{where} holds several state dicts {found}; choose one with key=… "
                f"(e.g. key={found[-1]!r} for the EMA weights)."
            )
        if found:
            obj = obj[found[0]]
    if not _is_state_dict(obj):
        raise TorchFileError(
            f"{where} holds no state dict (a dict of tensor names to tensors) at the top level "
            f"or under {list(WRAPPER_KEYS)}."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)
