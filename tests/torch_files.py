"""Writing PyTorch checkpoints without torch, for tests of `tfsd.models.torch_file`.

The two formats of ``torch.save`` as ``torch/serialization.py`` writes them (pytorch/pytorch,
``_legacy_save`` and ``_save``; tensors pickle as ``torch._utils._rebuild_tensor_v2(storage,
storage_offset, size, stride, requires_grad, backward_hooks)``, storages as persistent ids). The
pickles are produced by Python's pure-Python pickler at protocol 2 (torch's default), with two
marker types emitting ``GLOBAL`` + ``REDUCE`` for names of modules that are not installed here.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_TYPES = {
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "float64": "DoubleStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "uint8": "ByteStorage",
}


class Global:
    """``GLOBAL module name`` in the pickle."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class Call:
    """``func(*args)`` in the pickle: the callable's GLOBAL, the argument tuple, REDUCE."""

    def __init__(self, func: Global, args: tuple):
        self.func, self.args = func, args


class Storage:
    """A storage: ``data`` is its raw bytes; ``dtype`` one of `STORAGE_TYPES`."""

    def __init__(self, key: str, dtype: str, data: bytes, numel: int):
        self.key, self.dtype, self.data, self.numel = key, dtype, data, numel


def storage(key: str, array: np.ndarray, dtype: str | None = None) -> Storage:
    """A storage holding ``array`` (flattened); ``dtype="bfloat16"``: float32 truncated."""
    array = np.ascontiguousarray(array).reshape(-1)
    if dtype == "bfloat16":
        raw = (array.astype("float32").view("uint32") >> 16).astype("<u2").tobytes()
        return Storage(key, "bfloat16", raw, array.size)
    return Storage(
        key, str(array.dtype), array.astype(array.dtype.newbyteorder("<")).tobytes(), array.size
    )


def tensor(st: Storage, offset: int, size: tuple, stride: tuple) -> Call:
    hooks = collections.OrderedDict()
    rebuild = Global("torch._utils", "_rebuild_tensor_v2")
    return Call(rebuild, (st, offset, tuple(size), tuple(stride), False, hooks))


def contiguous(key: str, array: np.ndarray, dtype: str | None = None) -> Call:
    """A contiguous tensor on its own storage."""
    st = storage(key, array, dtype)
    strides = tuple(int(np.prod(array.shape[i + 1 :])) for i in range(array.ndim))
    return tensor(st, 0, array.shape, strides)


class _Pickler(pickle._Pickler):  # noqa: SLF001  (the pure-Python pickler: dispatch is a dict)
    dispatch = pickle._Pickler.dispatch.copy()  # noqa: SLF001

    def __init__(self, file, legacy: bool):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages: dict[str, Storage] = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        self.storages[obj.key] = obj
        kind = Global("torch", STORAGE_TYPES[obj.dtype])
        pid = ("storage", kind, obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid

    def _save_global(self, obj: Global):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _save_call(self, obj: Call):
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    dispatch[Global] = _save_global
    dispatch[Call] = _save_call


def _pickle(obj, legacy: bool) -> tuple[bytes, dict[str, Storage]]:
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, legacy)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.storages


def save_legacy(obj, path) -> None:
    """``torch.save(obj, path, _use_new_zipfile_serialization=False)``."""
    data, storages = _pickle(obj, legacy=True)
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 4}}  # fmt: skip
    keys = sorted(storages)
    with open(path, "wb") as f:
        for header in (MAGIC, 1001, sys_info):
            f.write(pickle.dumps(header, protocol=2))
        f.write(data)
        f.write(pickle.dumps(keys, protocol=2))
        for key in keys:
            f.write(struct.pack("<q", storages[key].numel))
            f.write(storages[key].data)


def save_zip(obj, path, name: str = "archive") -> None:
    """``torch.save(obj, path)`` (the zip format of torch >= 1.6)."""
    data, storages = _pickle(obj, legacy=False)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{name}/data.pkl", data)
        z.writestr(f"{name}/byteorder", "little")
        for key, st in storages.items():
            z.writestr(f"{name}/data/{key}", st.data)
        z.writestr(f"{name}/version", "3\n")


def state_dict(arrays: dict[str, np.ndarray]) -> collections.OrderedDict:
    """An ``OrderedDict`` of contiguous tensors (as ``model.state_dict()``)."""
    return collections.OrderedDict(
        (k, contiguous(str(i), v)) for i, (k, v) in enumerate(arrays.items())
    )
