"""Export for TF Serving: a verified, versioned SavedModel of a model or a training run.

By default the model goes through `tfsd.models.fold_stochastic_depth` (each block's survival
factor multiplied into its branch's last affine op; the folded graph has no stochastic-depth op
and needs no tfsd code to load), checked against the unfolded model, written with three
signatures (`tfsd.serving.signatures`) and a warm-up file (`tfsd.serving.warmup`), reloaded and
replayed against the Keras model, and only then published (`tfsd.serving.publish`). Runs are read
through `tfsd.training.run_dir`. See ``docs/serving.md``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfsd import data as data_lib
from tfsd import models
from tfsd.serving import publish, signatures, warmup
from tfsd.serving.image_limits import ImageLimits
from tfsd.serving.publish import ExportError
from tfsd.serving.signatures import SIGNATURES
from tfsd.training import run_dir

FOLD_RTOL = 1e-5  # folded vs unfolded, and SavedModel vs Keras: max |a - b| / max |b|.


def relative_error(actual: Any, expected: Any) -> float:
    """``max |actual - expected| / max |expected|`` (the logit scale), 0 for two zero arrays."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape:
        return float("inf")
    scale = max(float(np.max(np.abs(expected), initial=0.0)), 1e-30)
    return float(np.max(np.abs(actual - expected), initial=0.0)) / scale


def _reference_logits(servable: signatures.Servable, signature: str, inputs: dict) -> np.ndarray:
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
    path: str, servable: signatures.Servable | None = None, *, rtol: float = FOLD_RTOL
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
    requests = warmup.read_warmup_file(os.path.join(path, warmup.WARMUP_FILE))
    if not requests or {s for s, _ in requests} != set(SIGNATURES):
        raise ExportError(f"{path}: the warm-up file does not cover {SIGNATURES}.")
    errors = {s: 0.0 for s in SIGNATURES}
    for signature, inputs in requests:
        try:
            out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})
        except Exception as e:  # noqa: BLE001  (any failure means: do not publish)
            raise ExportError(f"{path}: warm-up request for {signature} failed: {e}") from e
        refused = [str(m, "utf-8") for m in out["error"].numpy() if m]
        if refused:  # the warm-up images are real images within the limits
            raise ExportError(f"{path}: a warm-up image of {signature} was refused: {refused[0]}")
        if servable is not None:
            err = relative_error(out["logits"], _reference_logits(servable, signature, inputs))
            if not err <= rtol:
                raise ExportError(
                    f"{path}: {signature} differs from the Keras model (relative error {err:.3g} "
                    f"> {rtol}); not published."
                )
            errors[signature] = max(errors[signature], err)
    return errors


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
    preprocess: str | Callable[[tf.Tensor], tf.Tensor] | None = None,
    class_names: Sequence[str] | None = None,
    version: int | None = None,
    fold: bool = True,
    sample_images: np.ndarray | None = None,
    model_name: str | None = None,
    container_base_path: str | None = None,
    warmup_batch_sizes: Sequence[int] = warmup.WARMUP_BATCH_SIZES,
    image_limits: ImageLimits | None = None,
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
      image_limits: the largest encoded image ``serving_bytes`` / ``serving_examples`` decode
        (pixels, bytes); a larger one is refused as that example's error. Default
        `ImageLimits()` (`tfsd.serving.image_limits`).

    Returns:
      The published version directory.

    Raises:
      ValueError: bad arguments. ExportError: the version is taken, folding changed the outputs,
        or the reloaded SavedModel does not answer as the Keras model does. On any error nothing is
        left under ``export_base`` beyond what was there.
    """
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError("export_saved_model needs a functional keras.Model.")
    height, width = signatures.model_image_size(model)
    if preprocess is None:
        raise ValueError(
            "preprocess is required: 'inception' (ImageNet-style central crop), 'cifar' / 'none' "
            "(resize the whole image), or a function; tfsd cannot tell which the model expects."
        )
    if isinstance(preprocess, str):
        preprocess = signatures.preprocess_fn(preprocess, height)
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
    image_limits = (image_limits or ImageLimits()).check()
    export_base = str(export_base).rstrip("/")
    model_name = model_name or os.path.basename(export_base)
    if tf.io.gfile.exists(export_base) and not tf.io.gfile.isdir(export_base):
        raise ExportError(f"{export_base} exists and is not a directory.")
    # Everything models.config needs is checked now: once a version is published, a failure
    # would leave it live without models.config, and a retry would publish another version.
    publish.check_models_config(export_base, model_name)

    served = model
    if fold:
        served = models.fold_stochastic_depth(model)
        err = check_fold(model, served, sample_images)
        logging.info("Folded stochastic depth: relative error %.2g vs unfolded.", err)
    servable = signatures.Servable(served, preprocess, class_names, image_limits)

    tf.io.gfile.makedirs(export_base)
    publish.choose_version(export_base, version)  # fail early on a taken --version, before any work
    publish.remove_abandoned_tmp_dirs(export_base)
    tmp_dir = os.path.join(export_base, f"{publish.TMP_PREFIX}{uuid.uuid4().hex}")
    owner = publish.write_owner_file(tmp_dir)
    try:
        signatures.write_saved_model(servable, tmp_dir)
        warmup.write_warmup_file(
            os.path.join(tmp_dir, warmup.WARMUP_FILE),
            model_name,
            warmup.warmup_inputs(sample_images, sizes),
        )
        errors = verify_export(tmp_dir, servable)
        logging.info("Verified %s: relative errors %s", tmp_dir, errors)
        # Claims a number (gs://) or renames (local); a number lost to a concurrent export
        # moves on to the next one (only when the version was not given).
        final_dir = publish.publish_version(tmp_dir, export_base, version)
    finally:
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
        tf.io.gfile.remove(owner)
    publish.write_models_config(export_base, model_name, container_base_path)
    logging.info("Exported %s", final_dir)
    return final_dir


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
    image_limits: ImageLimits | None = None,
) -> str:
    """Exports a training run's checkpoint (see `run_dir.restore_run`, `export_saved_model`).

    The run's eval preprocessing backs ``serving_bytes`` / ``serving_examples``, its eval images
    feed the fold check and the warm-up requests, and its label names (TFDS, folder) become the
    ``class_names`` output.

    Raises:
      ExportError: also for a run that cannot be restored (`run_dir.RunDirError`'s message).
    """
    try:
        model, config, info, _ = run_dir.restore_run(
            model_dir, checkpoint=checkpoint, weights=weights, data_dir=data_dir
        )
    except run_dir.RunDirError as e:
        raise ExportError(f"{e} Nothing was exported.") from e
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
        image_limits=image_limits,
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
