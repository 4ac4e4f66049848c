"""Classify image files: ``python -m tfsd.predict --model_dir=RUN|--export_dir=DIR IMAGE...``.

Two sources, one answer (the top-5 class names and softmax scores per image):

* ``--model_dir``: a ``tfsd.train`` run. Its checkpoint is restored with
  `tfsd.export.restore_run` (EMA weights when kept, unless ``--weights=raw``) and each image goes
  through the run's own eval preprocessing (`tfsd.data.make_eval_image_fn`: decode, center crop,
  resize), exactly as in evaluation. Class names are the dataset's (TFDS labels, folder names).
* ``--export_dir``: a SavedModel written by ``tfsd.export``, either a version directory
  (``BASE/3``) or the base path (the highest version, as TF Serving picks). The encoded bytes go
  to its ``serving_bytes`` signature, which holds the same preprocessing.

Files are checked before any model is loaded: a missing file or one that is not a JPEG, PNG,
BMP or GIF image gets a clear error naming it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf
from absl import app, flags

from tfsd import cli, export
from tfsd import data as data_lib

TOP_K = 5


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
    model, config, info, _ = export.restore_run(
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
    versions = export.existing_versions(export_dir)
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


# -------------------------------------------------------------------------------------------------
# Command line (flags defined when the CLI runs; --model_dir / --data_dir are tfsd.train's).
# -------------------------------------------------------------------------------------------------


def _define_flags() -> list[str]:
    f = flags
    defined = dict(
        export_dir=f.DEFINE_string("export_dir", None, "An export: BASE/<N> or BASE (highest)."),
        checkpoint=f.DEFINE_string("checkpoint", None, "Checkpoint prefix; default: the latest."),
        weights=f.DEFINE_enum("weights", None, ["ema", "raw"], "Default: EMA if the run has it."),
        top_k=f.DEFINE_integer("top_k", TOP_K, "Classes shown per image."),
    )
    return list(defined)


_COMMAND = cli.Command(_define_flags, positional=True)


def main(argv: list[str]) -> None:
    v = _COMMAND.values()
    paths = argv[1:]
    if bool(v["model_dir"]) == bool(v["export_dir"]):
        raise app.UsageError("Give exactly one of --model_dir and --export_dir.")
    if not paths:
        raise app.UsageError("Give one or more image files after the flags.")
    try:
        if v["model_dir"]:
            result: Any = predict_run(
                v["model_dir"], paths, checkpoint=v["checkpoint"], weights=v["weights"],
                data_dir=v["data_dir"], top_k=v["top_k"],
            )  # fmt: skip
        else:
            result = predict_export(v["export_dir"], paths, top_k=v["top_k"])
    except (export.ExportError, PredictError, ValueError, FileNotFoundError) as e:
        sys.exit(f"tfsd.predict: {e}")
    print(format_predictions(paths, result))
    print(json.dumps({"predictions": {p: r for p, r in zip(paths, result)}}))


def run_main() -> None:
    """Entry point of ``python -m tfsd.predict`` and the ``tfsd-predict`` console script."""
    _COMMAND.run(main)


if __name__ == "__main__":
    run_main()
