"""Calibration and verification images from any folder, for exports that have no run.

``tfsd-tflite --calibration_images=DIR``: every image file under DIR (sorted by path), decoded
and preprocessed as the export's ``serving_bytes`` does (a named eval preprocessing, the one
``tfsd-export --preprocess`` took); the first ``calibration_steps`` calibrate int8, the rest (up
to ``verify_images``) verify every conversion. Before they are used, the first image is run
through the export's own ``serving_bytes`` and through ``serving_default`` on the decoded image:
different logits mean the preprocessing is not the export's, and nothing is converted.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from tfsd.serving import signatures
from tfsd.serving.tflite_convert import ServingModel, TFLiteError
from tfsd.serving.tflite_verify import EvalData

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# serving_bytes vs serving_default on the same decoded image: the same graph, float rounding only.
_PREPROCESS_ATOL = 1e-3


def image_files(directory: str) -> list[str]:
    """Image files under ``directory`` (recursively), sorted by path."""
    if not tf.io.gfile.isdir(directory):
        raise TFLiteError(f"--calibration_images: {directory} is not a directory.")
    files = []
    for root, _, names in tf.io.gfile.walk(directory):
        files += [os.path.join(root, n) for n in names if n.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(files)


def load_folder_data(
    directory: str,
    model: ServingModel,
    *,
    preprocess: str = "inception",
    calibration_steps: int,
    verify_images: int,
) -> EvalData:
    """`EvalData` from a folder of images: the first ``calibration_steps`` calibrate, the next
    (at most ``verify_images``, at least one) verify; no labels.

    Raises:
      TFLiteError: no folder, too few images, an undecodable file, or a preprocessing that is
        not the export's (serving_bytes gives other logits).
    """
    files = image_files(directory)
    if len(files) < calibration_steps + 1:
        raise TFLiteError(
            f"{directory} holds {len(files)} images; {calibration_steps} calibration images and "
            "at least one verification image (disjoint) are needed. Lower --calibration_steps."
        )
    files = files[: calibration_steps + verify_images]
    fn = signatures.preprocess_fn(preprocess, model.height)
    blobs, images = [], []
    for path in files:
        with tf.io.gfile.GFile(path, "rb") as f:
            blob = f.read()
        try:
            images.append(fn(tf.constant(blob)).numpy())
        except tf.errors.InvalidArgumentError as e:
            raise TFLiteError(f"Cannot decode {path} as an image: {e.message}") from e
        blobs.append(blob)
    images = np.stack(images).astype(np.float32)
    _check_preprocessing(model, blobs[0], images[:1], preprocess)
    return EvalData(
        calibration=images[:calibration_steps],
        verification=images[calibration_steps:],
        labels=None,
        source=f"images of {directory} ({preprocess} preprocessing)",
    )


def _check_preprocessing(model: ServingModel, blob: bytes, image: np.ndarray, name: str) -> None:
    if "serving_bytes" not in model.loaded.signatures:
        raise TFLiteError(f"{model.path} has no serving_bytes signature: not a tfsd export.")
    served = model.loaded.signatures["serving_bytes"](image_bytes=tf.constant([blob]))["logits"]
    ours = model.signature(images=tf.constant(image))["logits"]
    diff = float(np.max(np.abs(served.numpy() - ours.numpy())))
    if not diff <= _PREPROCESS_ATOL * max(1.0, float(np.max(np.abs(served.numpy())))):
        raise TFLiteError(
            f"The {name!r} preprocessing is not the export's (serving_bytes logits differ by "
            f"{diff:.3g}); pass the --calibration_preprocess the export was made with "
            f"(tfsd-export --preprocess)."
        )
