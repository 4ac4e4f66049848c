"""Export for TF Serving: ``python -m tfsd.export --model_dir=RUN --export_dir=BASE``.

Writes ``BASE/<version>/``, a SavedModel that TF Serving loads as version ``<version>`` of a model:

* **Folded inference path.** By default the run's model goes through
  `tfsd.models.fold_stochastic_depth`: each block's survival factor is multiplied into its
  branch's last affine op and every stochastic-depth layer becomes its branch plus a plain
  ``Add``, so the served graph has no stochastic-depth op, no random op and no extra multiply, and
  the folded model needs no tfsd code to load. Before anything is published the folded model is
  compared with the unfolded one in inference mode on eval images (relative error ≤ 1e-5).
  ``fold=False`` exports the layers' own inference path (``shortcut + p·residual``).
* **Three signatures** in one SavedModel (names, dtypes and shapes: README, "Serving"):
  ``serving_default`` (float32 images in [0, 255]), ``serving_bytes`` (encoded images, decoded
  and preprocessed with the run's eval preprocessing, `tfsd.data.make_eval_image_fn`: the code
  ``tfsd.data`` runs for eval, not a copy) and ``serving_examples`` (serialized
  ``tf.train.Example`` with ``image/encoded``, the TFX / Model Garden convention). Each returns
  ``logits``, ``probabilities``, top-k ``classes`` and ``scores``, and ``class_names`` when the
  run knows its label names.
* **Versioned and atomic.** The export is written to a hidden, non-numeric directory beside the
  versions (TF Serving only loads integer-named directories: REFERENCES.md, serving conventions),
  reloaded with ``tf.saved_model.load``, checked (every warm-up request replays through its
  signature and matches the Keras model), and only then renamed to the next free integer. Any
  failure removes the temporary directory and leaves ``BASE`` as it was; an existing version is
  never touched. On object stores (``gs://``, ``s3://``) a rename is a copy, so files are copied
  with ``saved_model.pb`` last: a server that lists the new version mid-copy finds no graph, fails
  that load attempt and retries, instead of loading a graph whose variables are not there yet
  (tensorflow/tensorflow#20635, tensorflow/serving#631).
* **Warm-up.** ``assets.extra/tf_serving_warmup_requests``: a TFRecord of ``PredictionLog``
  protos (tensorflow-serving-api) with real eval images, one request per signature at batch 1 and
  at a typical batch size (TF Serving replays at most 1000 records).
* **Server config.** ``BASE/models.config``: a ``ModelServerConfig`` text proto naming the model
  and its base path as mounted in the TF Serving container (``export/docker-compose.yml``).

Model Garden's vision export (``official/vision/serving``) was the starting point: its
``image_bytes`` / ``tf_example`` signatures and its decoding with ``tf.map_fn`` on CPU. It writes
``export_dir/saved_model`` with no version and one signature per export; tfsd adds the versioned
atomic publish, the verification and the warm-up file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from tfsd import cli, models, train
from tfsd import data as data_lib

SIGNATURES = ("serving_default", "serving_bytes", "serving_examples")
# Input key of each signature (REST: {"instances": [...]} rows map to the single input).
INPUT_KEYS = {"serving_default": "images", "serving_bytes": "image_bytes",
              "serving_examples": "examples"}  # fmt: skip
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MODELS_CONFIG = "models.config"
MAX_TOP_K = 5
WARMUP_BATCH_SIZES = (1, 8)  # batch 1 and a typical small batch (<= max_batch_size in export/)
FOLD_RTOL = 1e-5  # folded vs unfolded, and SavedModel vs Keras: max |a - b| / max |b|.
_TMP_PREFIX = ".tfsd-export-tmp-"


class ExportError(RuntimeError):
    """An export that cannot be made or verified; nothing was published."""


class VersionTakenError(ExportError):
    """The version directory appeared while exporting; nothing was overwritten."""


# -------------------------------------------------------------------------------------------------
# Versions and publishing.
# -------------------------------------------------------------------------------------------------


def existing_versions(export_base: str) -> list[int]:
    """The integer version directories under ``export_base`` (what TF Serving would load)."""
    if not tf.io.gfile.isdir(export_base):
        return []
    names = [n.rstrip("/") for n in tf.io.gfile.listdir(export_base)]
    return sorted(int(n) for n in names if re.fullmatch(r"[0-9]+", n))


def _choose_version(export_base: str, version: int | None) -> int:
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


def _is_local(path: str) -> bool:
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


def _publish(tmp_dir: str, final_dir: str) -> None:
    """Moves a verified export into place; never replaces an existing directory."""
    if tf.io.gfile.exists(final_dir):
        raise VersionTakenError(f"{final_dir} appeared while exporting; nothing was overwritten.")
    if _is_local(final_dir):
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
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", model_name):
        raise ValueError(f"model_name must be a URL-safe name ([A-Za-z0-9_.-]), got {model_name!r}")
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
# The serving functions.
# -------------------------------------------------------------------------------------------------


def _image_size(model: keras.Model) -> tuple[int, int]:
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(
            f"The model must take images [batch, H, W, 3] with a fixed H and W to be exported; "
            f"its input shape is {shape}."
        )
    return int(shape[1]), int(shape[2])


def preprocess_fn(mode: str, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """An eval preprocessing by name (``inception`` | ``cifar`` | ``none``), for a bare model.

    The same `tfsd.data.make_eval_image_fn` a run uses, resolved for a data-less source: a run's
    export takes its dataset's own preprocessing instead.
    """
    if mode not in ("inception", "cifar", "none"):
        raise ValueError(f"preprocess must be 'inception', 'cifar' or 'none', got {mode!r}.")
    # The synthetic source reads no data; only the preprocessing mode matters here.
    return data_lib.make_eval_image_fn({"name": "synthetic", "preprocess": mode}, image_size)


class _Servable:
    """The three signature functions over one inference model."""

    def __init__(
        self,
        model: keras.Model,
        preprocess: Callable[[tf.Tensor], tf.Tensor],
        class_names: Sequence[str] | None,
    ):
        self.model = model
        self.height, self.width = _image_size(model)
        self.preprocess = preprocess
        num_classes = int(model.outputs[0].shape[-1])
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes:
                raise ValueError(
                    f"{len(class_names)} class names for a model with {num_classes} outputs."
                )
        self.class_names = class_names
        self.top_k = min(MAX_TOP_K, num_classes)

    def outputs(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = tf.cast(self.model(images, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=self.top_k)
        out = {"logits": logits, "probabilities": probabilities,
               "classes": tf.cast(classes, tf.int32), "scores": scores}  # fmt: skip
        if self.class_names is not None:
            # Names of the top-k classes, [batch, k] like `classes`: every output keeps the batch
            # dimension, as TF Serving's REST row format ("instances") requires.
            out["class_names"] = tf.gather(tf.constant(self.class_names), classes)
        return out

    def decode(self, image_bytes: tf.Tensor) -> tf.Tensor:
        # One image at a time: encoded images differ in size. Decoding errors surface as
        # InvalidArgumentError from the signature (tf.io.decode_image's own error).
        return tf.map_fn(
            self.preprocess,
            image_bytes,
            fn_output_signature=tf.TensorSpec([self.height, self.width, 3], tf.float32),
        )

    def serving_default(self, images):
        return self.outputs(images)

    def serving_bytes(self, image_bytes):
        return self.outputs(self.decode(image_bytes))

    def serving_examples(self, examples):
        features = tf.io.parse_example(
            examples, {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
        )
        return self.outputs(self.decode(features["image/encoded"]))

    def input_signatures(self) -> dict[str, list[tf.TensorSpec]]:
        return {
            "serving_default": [
                tf.TensorSpec([None, self.height, self.width, 3], tf.float32, name="images")
            ],
            "serving_bytes": [tf.TensorSpec([None], tf.string, name="image_bytes")],
            "serving_examples": [tf.TensorSpec([None], tf.string, name="examples")],
        }


def _write_saved_model(servable: _Servable, path: str) -> None:
    # keras.export.ExportArchive (keras/src/export/saved_model.py) is Keras 3's SavedModel writer:
    # it tracks the model's variables and registers each endpoint as a signature by name.
    archive = keras.export.ExportArchive()
    archive.track(servable.model)
    for name, spec in servable.input_signatures().items():
        archive.add_endpoint(name, getattr(servable, name), input_signature=spec)
    archive.write_out(path, verbose=False)


# -------------------------------------------------------------------------------------------------
# Warm-up requests and verification.
# -------------------------------------------------------------------------------------------------


def encode_jpeg(images: np.ndarray) -> list[bytes]:
    """Encodes float images in [0, 255] as JPEG (quality 95), as a camera or client would."""
    pixels = np.clip(np.round(np.asarray(images)), 0, 255).astype(np.uint8)
    return [tf.io.encode_jpeg(p, quality=95).numpy() for p in pixels]


def image_example(image_bytes: bytes) -> bytes:
    """A serialized ``tf.train.Example`` with ``image/encoded``, as ``serving_examples`` takes."""
    value = tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_bytes]))
    feature = {"image/encoded": value}
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def warmup_inputs(
    images: np.ndarray, batch_sizes: Sequence[int]
) -> list[tuple[str, dict[str, np.ndarray]]]:
    """(signature, inputs) pairs: every signature at every batch size, from real images."""
    encoded = encode_jpeg(images)
    requests = []
    for n in batch_sizes:
        if n > len(images):
            raise ValueError(f"warm-up batch size {n} exceeds the {len(images)} sample images.")
        requests.append(("serving_default", {"images": np.asarray(images[:n], np.float32)}))
        requests.append(("serving_bytes", {"image_bytes": np.array(encoded[:n], dtype=object)}))
        examples = [image_example(b) for b in encoded[:n]]
        requests.append(("serving_examples", {"examples": np.array(examples, dtype=object)}))
    return requests


def write_warmup_file(
    path: str, model_name: str, requests: Sequence[tuple[str, dict[str, np.ndarray]]]
) -> None:
    """Writes TF Serving's warm-up TFRecord of ``PredictionLog`` protos."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    if len(requests) > 1000:
        raise ValueError(f"TF Serving replays at most 1000 warm-up records, got {len(requests)}.")
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for signature, inputs in requests:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            for key, value in inputs.items():
                request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
            writer.write(log.SerializeToString())


def read_warmup_file(path: str) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Parses a warm-up file back into (signature, inputs); raises on a malformed record."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out.append((request.model_spec.signature_name or "serving_default", inputs))
    return out


def relative_error(actual: Any, expected: Any) -> float:
    """``max |actual - expected| / max |expected|`` (the logit scale), 0 for two zero arrays."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def _reference_logits(servable: _Servable, signature: str, inputs: dict) -> np.ndarray:
    """What the Keras model gives for a request, preprocessing run eagerly in Python."""
    if signature == "serving_default":
        images = inputs["images"]
    else:
        if signature == "serving_bytes":
            blobs = inputs["image_bytes"]
        else:
            blobs = [
                tf.train.Example.FromString(e).features.feature["image/encoded"].bytes_list.value[0]
                for e in inputs["examples"]
            ]
        images = np.stack([servable.preprocess(tf.constant(b)).numpy() for b in blobs])
    return servable.model(tf.constant(images, tf.float32), training=False).numpy()


def verify_export(
    path: str, servable: _Servable | None = None, *, rtol: float = FOLD_RTOL
) -> dict[str, float]:
    """Replays every warm-up request through its signature of the SavedModel at ``path``.

    With ``servable`` (the in-memory model) each answer must match the Keras model within
    ``rtol`` (relative to the logit scale). Returns the largest relative error per signature.

    Raises:
      ExportError: a signature is missing, a record does not replay, or an answer differs.
    """
    loaded = tf.saved_model.load(path)
    missing = [s for s in SIGNATURES if s not in loaded.signatures]
    if missing:
        raise ExportError(f"{path}: signatures {missing} are missing.")
    requests = read_warmup_file(os.path.join(path, WARMUP_FILE))
    if not requests or {s for s, _ in requests} != set(SIGNATURES):
        raise ExportError(f"{path}: the warm-up file does not cover {SIGNATURES}.")
    errors = {s: 0.0 for s in SIGNATURES}
    for signature, inputs in requests:
        try:
            out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except Exception as e:  # noqa: BLE001  (any failure means: do not publish)
            raise ExportError(f"{path}: warm-up request for {signature} failed: {e}") from e
        if servable is not None:
            err = relative_error(out["logits"], _reference_logits(servable, signature, inputs))
            if not err <= rtol:
                raise ExportError(
                    f"{path}: {signature} differs from the Keras model (relative error {err:.3g} "
                    f"> {rtol}); not published."
                )
            errors[signature] = max(errors[signature], err)
    return errors


# -------------------------------------------------------------------------------------------------
# Exporting a model.
# -------------------------------------------------------------------------------------------------


def _sample_images(height: int, width: int, n: int) -> np.ndarray:
    """Eval images of the offline synthetic dataset, for models with no dataset of their own."""
    ds = data_lib.build_dataset(
        {"name": "synthetic"}, split="eval", global_batch_size=n, image_size=max(height, width)
    )
    images = next(iter(ds))[0].numpy()
    return images[:, :height, :width, :]


def check_fold(model: keras.Model, folded: keras.Model, images: np.ndarray) -> float:
    """Relative error of the folded model against the original in inference mode.

    Raises:
      ExportError: above `FOLD_RTOL` (the export is refused).
    """
    x = tf.constant(images, tf.float32)
    err = relative_error(folded(x, training=False), model(x, training=False))
    if not err <= FOLD_RTOL:
        raise ExportError(
            f"The folded model differs from the unfolded one (relative error {err:.3g} > "
            f"{FOLD_RTOL}); nothing was published. Export with fold=False."
        )
    return err


def export_saved_model(
    model: keras.Model,
    export_base: str,
    *,
    preprocess: str | Callable[[tf.Tensor], tf.Tensor] = "inception",
    class_names: Sequence[str] | None = None,
    version: int | None = None,
    fold: bool = True,
    sample_images: np.ndarray | None = None,
    model_name: str | None = None,
    container_base_path: str | None = None,
    warmup_batch_sizes: Sequence[int] = WARMUP_BATCH_SIZES,
) -> str:
    """Exports an in-memory Keras model as ``export_base/<version>/`` for TF Serving.

    Args:
      model: a functional model taking float images ``[batch, H, W, 3]`` in [0, 255] (fixed H, W)
        and returning logits ``[batch, C]``; tfsd models are.
      export_base: the model's base path (local or ``gs://``); created if missing.
      preprocess: what ``serving_bytes`` / ``serving_examples`` do to a decoded image: a
        preprocessing name (``inception``: the central crop; ``cifar`` / ``none``: a resize) or a
        function from a scalar string tensor to float32 ``[H, W, 3]``
        (`tfsd.data.make_eval_image_fn`).
      class_names: label names in label order; adds the ``class_names`` output.
      version: the version number; None takes the next free one (1 in an empty base).
      fold: fold stochastic depth into the weights (`tfsd.models.fold_stochastic_depth`).
      sample_images: float images ``[n, H, W, 3]`` in [0, 255] for the fold check and the warm-up
        requests (n ≥ the largest warm-up batch); None uses synthetic eval images.
      model_name: the model's name in TF Serving (warm-up requests, ``models.config``); default:
        the base directory's name.
      container_base_path: the base path as the server sees it (``models.config``); default
        ``/models/<model_name>``.
      warmup_batch_sizes: batch sizes of the warm-up requests (each signature at each size).

    Returns:
      The published version directory.

    Raises:
      ValueError: bad arguments. ExportError: the version is taken, folding changed the outputs,
        or the reloaded SavedModel does not answer as the Keras model does. On any error nothing is
        left under ``export_base`` beyond what was there.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError("export_saved_model needs a functional keras.Model.")
    height, width = _image_size(model)
    if isinstance(preprocess, str):
        preprocess = preprocess_fn(preprocess, height)
        if height != width:
            raise ValueError("Named preprocessings produce square images; pass a function.")
    sizes = sorted({int(n) for n in warmup_batch_sizes})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"warmup_batch_sizes must be positive, got {warmup_batch_sizes!r}.")
    if sample_images is None:
        sample_images = _sample_images(height, width, sizes[-1])
    sample_images = np.asarray(sample_images, np.float32)
    if sample_images.shape[1:] != (height, width, 3):
        raise ValueError(
            f"sample_images must be [n, {height}, {width}, 3], got {sample_images.shape}."
        )
    export_base = str(export_base).rstrip("/")
    model_name = model_name or os.path.basename(export_base)
    if tf.io.gfile.exists(export_base) and not tf.io.gfile.isdir(export_base):
        raise ExportError(f"{export_base} exists and is not a directory.")

    served = model
    if fold:
        served = models.fold_stochastic_depth(model)
        err = check_fold(model, served, sample_images)
        logging.info("Folded stochastic depth: relative error %.2g vs unfolded.", err)
    servable = _Servable(served, preprocess, class_names)

    tf.io.gfile.makedirs(export_base)
    _choose_version(export_base, version)  # fail early on a taken --version, before any work
    tmp_dir = os.path.join(export_base, f"{_TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        _write_saved_model(servable, tmp_dir)
        write_warmup_file(
            os.path.join(tmp_dir, WARMUP_FILE), model_name, warmup_inputs(sample_images, sizes)
        )
        errors = verify_export(tmp_dir, servable)
        logging.info("Verified %s: relative errors %s", tmp_dir, errors)
        for attempt in range(3):
            final_dir = os.path.join(export_base, str(_choose_version(export_base, version)))
            try:
                _publish(tmp_dir, final_dir)
                break
            except VersionTakenError:
                # Another export published this number since it was chosen: take the next one
                # (only when the version was not given; a given one raised above).
                if version is not None or attempt == 2:
                    raise
    finally:
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
    write_models_config(export_base, model_name, container_base_path)
    logging.info("Exported %s", final_dir)
    return final_dir


# -------------------------------------------------------------------------------------------------
# Exporting a training run.
# -------------------------------------------------------------------------------------------------


def load_run_config(model_dir: str) -> ml_collections.ConfigDict:
    """The resolved config a run wrote to ``model_dir/config.json``."""
    path = os.path.join(model_dir, "config.json")
    if not tf.io.gfile.isdir(model_dir):
        raise ExportError(f"Run directory {model_dir} does not exist.")
    if not tf.io.gfile.exists(path):
        raise ExportError(
            f"{model_dir} is not a tfsd run directory: it has no config.json (written by "
            "python -m tfsd.train at the start of a run)."
        )
    with tf.io.gfile.GFile(path) as f:
        try:
            config = ml_collections.ConfigDict(json.load(f))
        except json.JSONDecodeError as e:
            raise ExportError(f"{path} is not valid JSON: {e}") from e
    for key in ("model", "data"):
        if key not in config:
            raise ExportError(f"{path} has no {key!r} section; is it a tfsd run?")
    return config


def restore_run(
    model_dir: str,
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    data_dir: str | None = None,
) -> tuple[keras.Model, ml_collections.ConfigDict, data_lib.DatasetInfo, str]:
    """Builds a run's model and restores a checkpoint into it.

    Args:
      model_dir: the run directory (``--model_dir`` of ``tfsd.train``).
      checkpoint: a checkpoint prefix (``DIR/checkpoints/ckpt-1000``) or a directory of
        checkpoints (its latest); None takes the run's latest.
      weights: "ema" (the run's EMA weights; an error if it kept none), "raw" (the trained
        weights) or None (EMA when the run has it, else raw).
      data_dir: TFDS data directory, for the class count and names of TFDS runs.

    Returns:
      ``(model, config, dataset_info, checkpoint_path)``, the model in float32 with the chosen
      weights.

    Raises:
      ExportError: no run, no checkpoint, or a checkpoint that does not match the model.
    """
    if weights not in (None, "ema", "raw"):
        raise ValueError(f"weights must be 'ema' or 'raw', got {weights!r}.")
    config = load_run_config(model_dir)
    if checkpoint is None:
        checkpoint = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
        if checkpoint is None:
            raise ExportError(
                f"{model_dir} has no checkpoint in {os.path.join(model_dir, 'checkpoints')}: "
                "train first (a run saves every checkpoint_every_steps and at the end)."
            )
    elif tf.io.gfile.isdir(checkpoint):
        directory, checkpoint = checkpoint, tf.train.latest_checkpoint(checkpoint)
        if checkpoint is None:
            raise ExportError(f"{directory} holds no checkpoint.")
    elif not tf.io.gfile.exists(checkpoint + ".index"):
        raise ExportError(f"Checkpoint {checkpoint} does not exist (no {checkpoint}.index).")
    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    num_classes = config.model.num_classes or info.num_classes
    has_ema = float(config.get("ema_decay", 0.0) or 0.0) > 0
    if weights == "ema" and not has_ema:
        raise ExportError(f"{model_dir} kept no EMA weights (ema_decay = 0); use weights='raw'.")
    use_ema = has_ema and weights != "raw"

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")  # served in float32 whatever trained.
    try:
        model = train.build_model(config, num_classes)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    items: dict[str, Any] = {"model": model}
    ema = None
    if has_ema:
        ema = train.EMA(model, float(config.ema_decay))
        items["ema"] = ema.shadows
    try:
        status = tf.train.Checkpoint(**items).restore(checkpoint)
        status.assert_existing_objects_matched()
        status.expect_partial()  # the optimizer, step and data iterator are not needed here.
    except Exception as e:  # noqa: BLE001  (TF raises OpError, AssertionError, ValueError, ...)
        raise ExportError(
            f"Checkpoint {checkpoint} does not match the model of {model_dir} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). Nothing was exported."
        ) from e
    if use_ema:
        for shadow, variable in zip(ema.shadows, ema.sources):
            variable.assign(shadow.value)
    logging.info("Restored %s (%s weights).", checkpoint, "EMA" if use_ema else "raw")
    return model, config, info, checkpoint


def export_run(
    model_dir: str,
    export_base: str,
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    fold: bool = True,
    version: int | None = None,
    data_dir: str | None = None,
    model_name: str | None = None,
    container_base_path: str | None = None,
) -> str:
    """Exports a training run's checkpoint (see `restore_run`, `export_saved_model`).

    The run's eval preprocessing backs ``serving_bytes`` / ``serving_examples``, its eval images
    feed the fold check and the warm-up requests, and its label names (TFDS, folder) become the
    ``class_names`` output.
    """
    model, config, info, _ = restore_run(
        model_dir, checkpoint=checkpoint, weights=weights, data_dir=data_dir
    )
    size = int(config.model.image_size)
    preprocess = data_lib.make_eval_image_fn(config.data, size, data_dir=data_dir)
    eval_ds = data_lib.build_dataset(
        config.data, split="eval", global_batch_size=8, image_size=size, data_dir=data_dir
    )
    images = next(iter(eval_ds))[0].numpy()
    num_classes = int(model.outputs[0].shape[-1])
    names = info.class_names if info.class_names and len(info.class_names) == num_classes else None
    return export_saved_model(
        model,
        export_base,
        preprocess=preprocess,
        class_names=names,
        version=version,
        fold=fold,
        sample_images=images,
        model_name=model_name,
        container_base_path=container_base_path,
        warmup_batch_sizes=(1, len(images)),
    )


def export_keras_file(path: str, export_base: str, **kwargs: Any) -> str:
    """Exports a saved ``.keras`` model (tfsd layers are registered on import)."""
    if not tf.io.gfile.exists(path):
        raise ExportError(f"Keras model file {path} does not exist.")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"Cannot load {path} as a Keras model: {e}") from e
    return export_saved_model(model, export_base, **kwargs)


# -------------------------------------------------------------------------------------------------
# Command line.
# -------------------------------------------------------------------------------------------------


def _define_flags() -> list[str]:
    """Defines the CLI's flags; ``model_dir`` and ``data_dir`` are tfsd.train's own (imported)."""
    f = flags
    defined = dict(
        keras_model=f.DEFINE_string("keras_model", None, "A .keras model file to export instead."),
        export_dir=f.DEFINE_string("export_dir", None, "Base path: versions go in BASE/<N>/."),
        checkpoint=f.DEFINE_string("checkpoint", None, "Checkpoint prefix; default: the latest."),
        version=f.DEFINE_integer("version", None, "Version number; default: the next free one."),
        weights=f.DEFINE_enum("weights", None, ["ema", "raw"], "Default: EMA if the run has it."),
        fold=f.DEFINE_bool("fold", True, "Fold stochastic depth into the weights."),
        model_name=f.DEFINE_string("model_name", None, "Name in TF Serving; default: BASE's name."),
        container_base_path=f.DEFINE_string(
            "container_base_path", None, "BASE as the server sees it; default /models/<name>."
        ),
        preprocess=f.DEFINE_enum(
            "preprocess", "inception", ["inception", "cifar", "none"], "--keras_model only."
        ),
        class_names=f.DEFINE_string(
            "class_names", None, "--keras_model only: a text file with one class name per line."
        ),
    )
    return list(defined)


_COMMAND = cli.Command(_define_flags)


def main(argv: list[str]) -> None:
    v = _COMMAND.values()
    if not v["export_dir"]:
        raise app.UsageError("--export_dir is required.")
    if bool(v["model_dir"]) == bool(v["keras_model"]):
        raise app.UsageError("Give exactly one of --model_dir and --keras_model.")
    common = dict(
        version=v["version"],
        fold=v["fold"],
        model_name=v["model_name"],
        container_base_path=v["container_base_path"],
    )
    try:
        if v["model_dir"]:
            path = export_run(
                v["model_dir"],
                v["export_dir"],
                checkpoint=v["checkpoint"],
                weights=v["weights"],
                data_dir=v["data_dir"],
                **common,
            )
        else:
            names = None
            if v["class_names"]:
                with tf.io.gfile.GFile(v["class_names"]) as f:
                    names = [line.strip() for line in f if line.strip()]
            path = export_keras_file(
                v["keras_model"],
                v["export_dir"],
                preprocess=v["preprocess"],
                class_names=names,
                **common,
            )
    except (ExportError, ValueError, FileNotFoundError) as e:
        sys.exit(f"tfsd.export: {e}")
    print(json.dumps({"exported": path}))


def run_main() -> None:
    """Entry point of ``python -m tfsd.export`` and the ``tfsd-export`` console script."""
    _COMMAND.run(main)


if __name__ == "__main__":
    run_main()


__all__ = [
    "ExportError",
    "SIGNATURES",
    "check_fold",
    "existing_versions",
    "export_keras_file",
    "export_run",
    "export_saved_model",
    "read_warmup_file",
    "restore_run",
    "verify_export",
    "write_models_config",
]
