"""Classify image files with a run's checkpoint or an exported SavedModel (``tfsd.predict``).

A run's images go through its own eval preprocessing (`tfsd.data.make_eval_image_fn`); an export's
through its ``serving_bytes`` signature, which holds the same preprocessing. Files are checked
before any model is loaded (an image over the exports' default size limits is refused from its
header, `tfsd.serving.image_limits`); an image the export refuses is an error naming the file.
See ``docs/evaluate_predict_plot.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from tfsd import data as data_lib
from tfsd.serving import image_limits, publish
from tfsd.training import run_dir

TOP_K = 5
LIMITS = image_limits.ImageLimits()  # the exports' defaults; an export's own answer is checked too


class PredictError(ValueError):
    """An input that cannot be classified (missing or non-image file, missing export)."""


def read_images(paths: Sequence[str]) -> list[bytes]:
    """The encoded bytes of each file, each checked to decode as an image."""
    if not paths:
        raise PredictError("No image files given.")
    out = []
    for path in paths:
        if not tf.io.gfile.exists(path) or tf.io.gfile.isdir(path):
            raise PredictError(f"{path}: no such file.")
        with tf.io.gfile.GFile(path, "rb") as f:
            encoded = f.read()
        # The export's own limits first, from the header: nothing is decoded for a bomb.
        status = int(image_limits.check_image(tf.constant(encoded), LIMITS))
        if status in (image_limits.TOO_MANY_BYTES, image_limits.TOO_MANY_PIXELS):
            raise PredictError(f"{path}: {LIMITS.messages()[status]}.")
        try:
            data_lib.decode_image(tf.constant(encoded))
        except (tf.errors.InvalidArgumentError, ValueError) as e:
            raise PredictError(
                f"{path} is not an image tfsd can read (JPEG, PNG, BMP or GIF): "
                f"{str(e).splitlines()[0][:200]}"
            ) from e
        out.append(encoded)
    return out


def _top_k(probabilities: np.ndarray, names: Sequence[str] | None, k: int) -> list[list]:
    order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
    return [
        [(names[c] if names else str(c), float(p[c])) for c in row]
        for p, row in zip(probabilities, order)
    ]


def predict_run(
    model_dir: str,
    paths: Sequence[str],
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    data_dir: str | None = None,
    top_k: int = TOP_K,
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(class name, probability)`` per image, from a run's checkpoint."""
    encoded = read_images(paths)
    model, config, info, _ = run_dir.restore_run(
        model_dir, checkpoint=checkpoint, weights=weights, data_dir=data_dir
    )
    size = int(config.model.image_size)
    preprocess = data_lib.make_eval_image_fn(config.data, size, data_dir=data_dir)
    images = tf.stack([preprocess(tf.constant(b)) for b in encoded])
    logits = tf.cast(model(images, training=False), tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1).numpy()
    num_classes = probabilities.shape[-1]
    names = info.class_names if info.class_names and len(info.class_names) == num_classes else None
    return _top_k(probabilities, names, min(top_k, num_classes))


def resolve_export_dir(export_dir: str) -> str:
    """A version directory as given, or the highest version under a base path."""
    if tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = publish.existing_versions(export_dir)
    if not versions:
        raise PredictError(
            f"{export_dir} is neither a SavedModel (no saved_model.pb) nor an export base path "
            "with integer version directories (written by python -m tfsd.export)."
        )
    return os.path.join(export_dir, str(versions[-1]))


def predict_export(
    export_dir: str, paths: Sequence[str], *, top_k: int = TOP_K
) -> list[list[tuple[str, float]]]:
    """Top-``k`` ``(class name, probability)`` per image, from an exported SavedModel."""
    encoded = read_images(paths)
    path = resolve_export_dir(export_dir)
    loaded = tf.saved_model.load(path)
    if "serving_bytes" not in loaded.signatures:
        raise PredictError(f"{path} has no serving_bytes signature: not a tfsd export.")
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(encoded))
    if "valid" in out:  # exports with per-image validity (tfsd.serving.image_limits)
        for path, valid, error in zip(paths, out["valid"].numpy(), out["error"].numpy()):
            if not valid:
                raise PredictError(f"{path}: refused by the export: {error.decode()}.")
    # The export's own top-k (k = min(5, classes), sorted by score), with its label names when
    # the export has them: the answer TF Serving gives for the same bytes.
    classes, scores = out["classes"].numpy(), out["scores"].numpy()
    names = out["class_names"].numpy() if "class_names" in out else None
    k = min(top_k, classes.shape[-1])
    return [
        [
            (names[i][j].decode() if names is not None else str(classes[i][j]), float(scores[i][j]))
            for j in range(k)
        ]
        for i in range(len(encoded))
    ]


def format_predictions(paths: Sequence[str], predictions: list[list[tuple[str, float]]]) -> str:
    lines = []
    for path, top in zip(paths, predictions):
        lines.append(path)
        lines.extend(f"  {score:.4f}  {name}" for name, score in top)
    return "\n".join(lines)
