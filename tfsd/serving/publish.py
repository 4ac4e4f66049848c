"""Versions of an export base and their publication; TF Serving's ``models.config``.

TF Serving loads integer-named version directories of a model's base path. An export is written
to a hidden, non-numeric directory beside the versions, verified, and only then published as the
next free integer ``N``. Any number of exporters may publish to one base at once; none ever
replaces, deletes or half-overwrites a version it did not write:

- **Local disk**: one rename(2) of the directory, atomic; a number taken meanwhile is a
  non-empty directory, which rename refuses, and the exporter moves on to ``N + 1``.
- **gs://** (a rename is a copy, object by object; tensorflow/tensorflow#20635,
  tensorflow/serving#631): first *claim* ``N`` by creating the object
  ``<base>/.tfsd-claims/<N>`` with GCS's create-if-absent precondition (``if_generation_match=0``
  through google-cloud-storage); a lost claim moves on to ``N + 1``. Only the claim's owner then
  copies into ``<base>/<N>/``, ``saved_model.pb`` last, so TF Serving never loads a version
  without its variables; a failed copy removes exactly the objects it wrote and keeps the claim
  (the number is skipped, never reused). Claims are non-numeric, so TF Serving ignores them.
- ``models.config`` is created if absent in one atomic step (link(2) locally, the same
  precondition on gs://) and never replaced. Other schemes are refused before any work.

See ``docs/serving.md``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import time
import uuid

import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tfsd-export-tmp-"
CLAIMS_DIR = ".tfsd-claims"  # gs:// version claims (module docstring)
MAX_ATTEMPTS = 64  # numbers one export tries before giving up (one per concurrent winner)


OWNER_SUFFIX = ".owner"  # beside each temp dir: {"host", "pid"} of the export writing it
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class ExportError(RuntimeError):
    """An export that cannot be made or verified; nothing was published."""


class VersionTakenError(ExportError):
    """The version directory appeared while exporting; nothing was overwritten."""


def is_local(path: str) -> bool:
    return "://" not in path


def is_gcs(path: str) -> bool:
    return path.startswith("gs://")


def _check_supported(export_base: str) -> None:
    if not (is_local(export_base) or is_gcs(export_base)):
        raise ExportError(
            f"Cannot publish to {export_base}: publishing needs an atomic create-if-absent, which "
            "tfsd implements for local paths (rename) and gs:// (a generation precondition). "
            "Export locally and copy the version directory with your store's tools."
        )


def existing_versions(export_base: str) -> list[int]:
    """The integer version directories under ``export_base`` (what TF Serving would load)."""
    if not tf.io.gfile.isdir(export_base):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_base)]
    return sorted(int(n) for n in names if re.fullmatch(r"[0-9]+", n))


def claimed_versions(export_base: str) -> list[int]:
    """Versions claimed on gs:// (``<base>/.tfsd-claims/<N>``; see the module docstring)."""
    claims = os.path.join(export_base, CLAIMS_DIR)
    if is_local(export_base) or not tf.io.gfile.isdir(claims):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(claims)]
    return sorted(int(n) for n in names if re.fullmatch(r"[0-9]+", n))


def choose_version(export_base: str, version: int | None) -> int:
    """``version`` if it is free, else raises; None: one past every version and claim."""
    _check_supported(export_base)
    taken = set(existing_versions(export_base)) | set(claimed_versions(export_base))
    if version is None:
        return (max(taken) + 1) if taken else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"version must be a positive integer, got {version!r}.")
    if version in taken or tf.io.gfile.exists(os.path.join(export_base, str(version))):
        raise ExportError(
            f"Version {version} already exists in {export_base}; an existing version is never "
            "overwritten. Omit --version to take the next free one."
        )
    return version


def _gcs_blob(path: str):
    """The google-cloud-storage ``Blob`` of ``gs://bucket/name`` (honours STORAGE_EMULATOR_HOST)."""
    # Lazy: google-cloud-storage is needed only for gs:// bases and costs ~0.5 s to import.
    from google.cloud import storage

    bucket, _, name = path[len("gs://") :].partition("/")
    # project=None: object operations need no project, so credentials without one (a user's
    # ADC) work too (google/cloud/storage/client.py: an explicit None means "no project").
    return storage.Client(project=None).bucket(bucket).blob(name)


def _gcs_create(path: str, data: bytes) -> bool:
    """Creates the object ``path`` only if no object has that name; False if one does.

    ``if_generation_match=0`` is GCS's create-if-absent precondition: the server compares and
    writes in one step, so of any number of concurrent creators exactly one gets True
    (https://cloud.google.com/storage/docs/request-preconditions; tested against fake-gcs-server
    in tests/test_gcs_publish.py).
    """
    # Lazy, as in _gcs_blob.
    from google.api_core import exceptions

    try:
        _gcs_blob(path).upload_from_string(data, if_generation_match=0)
    except exceptions.PreconditionFailed:
        return False
    return True


def _claim(export_base: str, version: int) -> bool:
    """Claims ``version`` on gs:// for this process; False if another exporter holds it."""
    claim = os.path.join(export_base, CLAIMS_DIR, str(version))
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    if not _gcs_create(claim, json.dumps(owner).encode()):
        return False
    # A version directory made outside the protocol (by hand, by tfsd before claims existed):
    # the claim keeps the number from being tried again, and this exporter moves on.
    return not tf.io.gfile.exists(os.path.join(export_base, str(version)))


def _copy_tree_graph_last(src: str, dst: str) -> None:
    """Copies a SavedModel directory file by file, ``saved_model.pb`` last (object stores).

    On failure, removes exactly the files this call wrote (never ``dst`` as a whole: on an object
    store a directory is only a name prefix, and other objects under it are not ours).
    """
    files = []
    for dirpath, _, filenames in tf.io.gfile.walk(src):
        for name in filenames:
            files.append(os.path.join(dirpath, name))
    files.sort(key=lambda p: os.path.basename(p) == "saved_model.pb")
    written = []
    try:
        for path in files:
            target = os.path.join(dst, os.path.relpath(path, src))
            tf.io.gfile.copy(path, target, overwrite=False)
            written.append(target)
    except BaseException:
        # A partial copy has no saved_model.pb (it goes last), so no server loads it.
        for target in reversed(written):
            try:
                tf.io.gfile.remove(target)
            except tf.errors.OpError as e:
                logging.warning("Could not remove %s after a failed copy: %s", target, e)
        raise


def publish_dir(tmp_dir: str, final_dir: str) -> None:
    """Moves a verified export to ``final_dir``; raises `VersionTakenError` if another has it.

    Local: one rename(2), atomic. gs://: claim the number (`_claim`), then copy with
    ``saved_model.pb`` last. Never replaces or deletes anything it did not write.
    """
    if is_local(final_dir):
        # rename(2) within one directory is atomic: TF Serving sees no version or all of it. A
        # version another export published meanwhile is a non-empty directory, which rename
        # refuses (ENOTEMPTY/EEXIST) rather than replace.
        if os.path.exists(final_dir):
            raise VersionTakenError(f"{final_dir} exists; nothing was overwritten.")
        try:
            os.rename(tmp_dir, final_dir)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise VersionTakenError(f"{final_dir} appeared while exporting.") from e
            raise
        return
    _check_supported(final_dir)
    base, version = os.path.split(final_dir)
    if not _claim(base, int(version)):
        raise VersionTakenError(f"{final_dir} is claimed by another export; nothing was written.")
    # The claim stays after a failed copy: that number is never tried again (a gap in the
    # versions), so no exporter ever writes into a directory another one half-wrote.
    _copy_tree_graph_last(tmp_dir, final_dir)
    tf.io.gfile.rmtree(tmp_dir)


def publish_version(tmp_dir: str, export_base: str, version: int | None) -> str:
    """Publishes ``tmp_dir`` as ``version`` or, if None, the next version nobody else holds.

    A lost race (another exporter renamed or claimed the number first) moves on to the next
    number, at most `MAX_ATTEMPTS` times; a given ``version`` that is taken raises.
    """
    for _ in range(MAX_ATTEMPTS):
        final_dir = os.path.join(export_base, str(choose_version(export_base, version)))
        try:
            publish_dir(tmp_dir, final_dir)
            return final_dir
        except VersionTakenError:
            if version is not None:
                raise
            logging.info("%s was taken by another export; trying the next number.", final_dir)
    raise ExportError(
        f"No free version in {export_base} after {MAX_ATTEMPTS} tries: as many exports raced."
    )


def write_models_config(
    export_base: str, model_name: str, container_base_path: str | None = None
) -> str:
    """Writes ``export_base/models.config``, TF Serving's ``--model_config_file``.

    A ``ModelServerConfig`` text proto (tensorflow_serving/config/model_server_config.proto)
    naming ``model_name`` with its base path as the server sees it: ``container_base_path``
    (default ``/models/<model_name>``, where ``export/docker-compose.yml`` mounts the base).
    An existing file is never replaced: one that differs is kept, with a warning.
    """

    check_model_name(model_name)
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name = model_name
    entry.base_path = container_base_path or f"/models/{model_name}"
    entry.model_platform = "tensorflow"
    tf.io.gfile.makedirs(export_base)
    path = os.path.join(export_base, MODELS_CONFIG)
    text = text_format.MessageToString(config)
    if _create_if_absent(path, text.encode()):
        return path
    with tf.io.gfile.GFile(path) as f:
        existing = f.read()
    if existing != text:
        # An operator may have edited it (version policy, labels): never overwrite silently.
        logging.warning(
            "%s exists and differs from the config for model %r; left as it is.", path, model_name
        )
    return path


def _create_if_absent(path: str, data: bytes) -> bool:
    """Writes ``path`` only if it does not exist, atomically; False if it does."""
    if not is_local(path):
        _check_supported(path)
        return _gcs_create(path, data)
    # Write a private file, then link(2) it to the name: link never replaces an existing file
    # (EEXIST), so concurrent writers cannot race; rename would replace one.
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)
    return True


# -------------------------------------------------------------------------------------------------
# Checks made before anything is written, and temp dirs of exports that died.
# -------------------------------------------------------------------------------------------------


def check_model_name(model_name: str) -> None:
    """TF Serving's model name is a URL path segment (``/v1/models/<name>``): URL-safe only."""
    if not isinstance(model_name, str) or not re.fullmatch(MODEL_NAME_PATTERN, model_name):
        raise ValueError(
            f"model_name must be a URL-safe name ([A-Za-z0-9_.-], not starting with '.', '_' or "
            f"'-'), got {model_name!r}; it defaults to the export base's name: pass "
            "--model_name or rename the base."
        )


def check_models_config(export_base: str, model_name: str) -> None:
    """Everything `write_models_config` will need, checked before an export publishes.

    Raises:
      ValueError: a model name TF Serving cannot serve. ExportError: an existing
        ``models.config`` that is not a ``ModelServerConfig`` text proto (the server would refuse
        to start on it).
    """
    check_model_name(model_name)
    path = os.path.join(export_base, MODELS_CONFIG)
    if not tf.io.gfile.exists(path):
        return
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    try:
        text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
    except text_format.ParseError as e:
        raise ExportError(
            f"{path} is not a ModelServerConfig text proto ({e}); fix or remove it. Nothing was "
            "exported."
        ) from e


def write_owner_file(tmp_dir: str) -> str:
    """Marks ``tmp_dir`` as this process's: ``<tmp_dir>.owner`` holds host name and pid."""
    path = tmp_dir + OWNER_SUFFIX
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return path


def _pid_is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return True
    except PermissionError:  # exists, owned by another user
        return False
    return False


def remove_abandoned_tmp_dirs(export_base: str) -> list[str]:
    """Removes temp dirs of exports provably dead: started on this host by a pid now gone.

    A temp dir without an owner file (an older tfsd, an unreadable file) or from another host is
    left alone, with a warning: its exporter may still be running. Returns the removed dirs.
    """
    if not tf.io.gfile.isdir(export_base):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_base)]
    removed = []
    host = socket.gethostname()
    # A temp dir and its owner file, or either alone (a crash between writing the two).
    candidates = {n.removesuffix(OWNER_SUFFIX) for n in names if n.startswith(TMP_PREFIX)}
    for name in sorted(candidates):
        tmp_dir = os.path.join(export_base, name)
        owner_path = tmp_dir + OWNER_SUFFIX
        try:
            with tf.io.gfile.GFile(owner_path) as f:
                owner = json.loads(f.read())
            pid, owner_host = int(owner["pid"]), str(owner["host"])
        except (tf.errors.OpError, ValueError, KeyError, TypeError):
            logging.warning("%s has no readable owner file; left in place.", tmp_dir)
            continue
        if owner_host != host or pid == os.getpid() or not _pid_is_dead(pid):
            logging.warning(
                "%s belongs to %s pid %d, maybe running; left.", tmp_dir, owner_host, pid
            )
            continue
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
        tf.io.gfile.remove(owner_path)
        logging.info("Removed %s, left by export pid %d (no longer running).", tmp_dir, pid)
        removed.append(tmp_dir)
    return removed
