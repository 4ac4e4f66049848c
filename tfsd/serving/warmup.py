"""TF Serving warm-up requests: ``assets.extra/tf_serving_warmup_requests``.

A TFRecord of ``PredictionLog`` protos (tensorflow-serving-api) with real eval images, one request
per signature at batch 1 and at a typical batch size (TF Serving replays at most 1000 records).
See ``docs/serving.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")


WARMUP_BATCH_SIZES = (1, 8)  # batch 1 and a typical small batch (<= max_batch_size in export/)


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

    out = []
    for record in tf.data.TFRecordDataset(path):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        out.append((request.model_spec.signature_name or "serving_default", inputs))
    return out
