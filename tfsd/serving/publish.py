"""Versions of an export base and their atomic publish; TF Serving's ``models.config``.

TF Serving loads integer-named version directories of a model's base path. An export is written
to a hidden, non-numeric directory beside the versions, verified, and only then moved to the next
free integer: a rename on a local disk (atomic), a copy with ``saved_model.pb`` last on object
stores (tensorflow/tensorflow#20635, tensorflow/serving#631). See ``docs/serving.md``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import socket
import uuid

import tensorflow as tf
from absl import logging
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

MODELS_CONFIG = "models.config"
TMP_PREFIX = ".tfsd-export-tmp-"
OWNER_SUFFIX = ".owner"  # beside each temp dir: {"host", "pid"} of the export writing it
MODEL_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]*"


class ExportError(RuntimeError):
    """An export that cannot be made or verified; nothing was published."""


class VersionTakenError(ExportError):
    """The version directory appeared while exporting; nothing was overwritten."""


def existing_versions(export_base: str) -> list[int]:
    """The integer version directories under ``export_base`` (what TF Serving would load)."""
    if not tf.io.gfile.isdir(export_base):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_base)]
    return sorted(int(n) for n in names if re.fullmatch(r"[0-9]+", n))


def choose_version(export_base: str, version: int | None) -> int:
    taken = existing_versions(export_base)
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


def is_local(path: str) -> bool:
    return "://" not in path


def _copy_tree_graph_last(src: str, dst: str) -> None:
    """Copies a SavedModel directory file by file, ``saved_model.pb`` last (object stores)."""
    files = []
    for dirpath, _, filenames in tf.io.gfile.walk(src):
        for name in filenames:
            files.append(os.path.join(dirpath, name))
    files.sort(key=lambda p: os.path.basename(p) == "saved_model.pb")
    for path in files:
        target = os.path.join(dst, os.path.relpath(path, src))
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(path, target, overwrite=False)


def publish_dir(tmp_dir: str, final_dir: str) -> None:
    """Moves a verified export into place; never replaces an existing directory."""
    if tf.io.gfile.exists(final_dir):
        raise VersionTakenError(f"{final_dir} appeared while exporting; nothing was overwritten.")
    if is_local(final_dir):
        # rename(2) within one directory is atomic: TF Serving sees no version or all of it. A
        # version another export published meanwhile is a non-empty directory, which rename
        # refuses (ENOTEMPTY/EEXIST) rather than replace.
        try:
            os.rename(tmp_dir, final_dir)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                raise VersionTakenError(f"{final_dir} appeared while exporting.") from e
            raise
        return
    try:
        _copy_tree_graph_last(tmp_dir, final_dir)
    except BaseException:
        # A partial copy has no saved_model.pb (it goes last), so no server loads it; remove it.
        if tf.io.gfile.exists(final_dir):
            tf.io.gfile.rmtree(final_dir)
        raise
    tf.io.gfile.rmtree(tmp_dir)


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
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            existing = f.read()
        if existing != text:
            # An operator may have edited it (version policy, labels): never overwrite silently.
            logging.warning(
                "%s exists and differs from the config for model %r; left as it is.",
                path,
                model_name,
            )
        return path
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with tf.io.gfile.GFile(tmp, "w") as f:
        f.write(text)
    tf.io.gfile.rename(tmp, path, overwrite=False)
    return path


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
