"""Verifying a ``.tflite`` model in LiteRT against the SavedModel it came from.

The model runs in ``ai_edge_litert.interpreter.Interpreter`` (``tf.lite.Interpreter`` is
deprecated in TF 2.21) on held-out eval images, disjoint from the calibration images: top-1
agreement, logit differences, accuracy where labels are known, size, batch-1 latency, ops. See
``docs/tflite.md``.
"""

from __future__ import annotations

import collections
import time
from typing import Any, NamedTuple

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from tfsd import config_names
from tfsd import data as data_lib
from tfsd.serving.tflite_convert import (
    INPUT_KEY,
    SIGNATURE,
    ServingModel,
    TFLiteError,
    check_ops,
    float_ops,
    model_ops,
)
from tfsd.training import run_dir

DEFAULT_CALIBRATION_STEPS = 200  # TF's guide: ~100-500 samples; Model Garden uses 500.
DEFAULT_VERIFY_IMAGES = 500


class EvalData(NamedTuple):
    """Eval-split images in [0, 255]: calibration and verification sets, disjoint by index.

    ``calibration`` is images ``[0, n_cal)`` of the eval split and ``verification`` the next
    ``n_verify``; ``labels`` are the verification images' labels (None when unknown).
    """

    calibration: np.ndarray
    verification: np.ndarray
    labels: np.ndarray | None
    source: str


def load_eval_data(
    *,
    image_size: int,
    model_dir: str | None = None,
    representative_config: str | None = None,
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    data_dir: str | None = None,
) -> EvalData:
    """Eval images of a run's dataset (``model_dir``) or a named config's, eval preprocessing.

    With neither source, verification uses the offline synthetic dataset's eval images (no
    labels, no calibration set): enough to compare the two models, not to calibrate int8.

    Raises:
      ValueError: both sources, bad counts, or an eval split too small for both sets.
    """

    if model_dir and representative_config:
        raise ValueError("Give at most one of model_dir and representative_config.")
    if calibration_steps < 0 or verify_images < 1:
        raise ValueError(
            f"calibration_steps must be >= 0 and verify_images >= 1, got {calibration_steps} "
            f"and {verify_images}."
        )
    if model_dir:
        data_config = run_dir.load_run_config(model_dir).data
        source = f"eval split of the run {model_dir}"
    elif representative_config:
        data_config = config_names.load_config(representative_config).data
        source = f"eval split of config {representative_config}"
    else:
        data_config = {"name": "synthetic", "preprocess": "none"}
        source = "synthetic eval images (no --model_dir or --representative_config)"
        calibration_steps = 0
    info = data_lib.get_dataset_info(data_config, data_dir=data_dir)
    wanted = calibration_steps + verify_images
    if info.num_eval_examples < wanted:
        raise ValueError(
            f"The {source} has {info.num_eval_examples} images; {calibration_steps} calibration "
            f"+ {verify_images} verification images must be disjoint. Lower --calibration_steps "
            "or --verify_images."
        )
    ds = data_lib.build_dataset(
        data_config, split="eval", global_batch_size=min(wanted, 256), image_size=image_size,
        data_dir=data_dir,
    )  # fmt: skip
    images, labels = [], []
    for x, y in ds:
        images.append(x.numpy())
        labels.append(y.numpy())
        if sum(len(i) for i in images) >= wanted:
            break
    images = np.concatenate(images)[:wanted].astype(np.float32)
    labels = np.concatenate(labels)[:wanted]
    known = bool(model_dir or representative_config)
    return EvalData(
        calibration=images[:calibration_steps],
        verification=images[calibration_steps:],
        labels=labels[calibration_steps:] if known else None,
        source=source,
    )


class LiteModel:
    """A ``.tflite`` model in LiteRT's interpreter, run at batch 1 with fixed ``num_threads``."""

    def __init__(self, model: bytes, num_threads: int = 1):
        self.interpreter = Interpreter(model_content=model, num_threads=num_threads)
        self.interpreter.allocate_tensors()
        runner = self.interpreter.get_signature_runner(SIGNATURE)
        self.input = runner.get_input_details()[INPUT_KEY]
        self.outputs = runner.get_output_details()
        if tuple(self.input["shape"][:1]) != (1,):
            raise TFLiteError(f"Expected a batch-1 input, got shape {self.input['shape']}.")

    def _feed(self, image: np.ndarray) -> None:
        if self.input["dtype"] == np.uint8:
            image = np.clip(np.round(image), 0, 255).astype(np.uint8)
        self.interpreter.set_tensor(
            self.input["index"], np.asarray(image[None], self.input["dtype"])
        )

    def _read(self, key: str) -> np.ndarray:
        detail = self.outputs[key]
        value = self.interpreter.get_tensor(detail["index"])[0]
        if detail["dtype"] in (np.uint8, np.int8):
            scale, zero_point = detail["quantization"]
            value = (value.astype(np.float32) - zero_point) * scale
        return value.astype(np.float32)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """Dequantized logits, one image at a time."""
        out = []
        for image in images:
            self._feed(image)
            self.interpreter.invoke()
            out.append(self._read("logits"))
        return np.stack(out)

    def latency_ms(self, image: np.ndarray, runs: int = 50, warmup: int = 5) -> list[float]:
        """Wall-clock times of ``runs`` invokes on one image (after ``warmup``), in ms."""
        self._feed(image)
        for _ in range(warmup):
            self.interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    @property
    def uint8_input(self) -> bool:
        return self.input["dtype"] == np.uint8


def verify_tflite(
    model: bytes,
    reference: ServingModel,
    images: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    num_threads: int = 1,
    latency_runs: int = 50,
) -> dict[str, Any]:
    """Compares a ``.tflite`` model with the SavedModel on ``images`` (float, [0, 255]).

    A uint8-input model gets the images rounded to uint8 pixels, and the SavedModel gets the
    same rounded pixels: what a camera app would feed both.

    Returns:
      ``images``, ``top1_agreement``, ``max_abs_logit_diff``, ``relative_logit_diff`` (over the
      largest reference logit), ``size_bytes``, ``latency_ms`` (median) with ``num_threads``,
      ``ops`` (counts), ``float_ops``, ``input``/``output`` dtypes and quantization, and top-1
      accuracies when ``labels`` are given.
    """
    check_ops(model, "the .tflite model")
    lite = LiteModel(model, num_threads=num_threads)
    if tuple(lite.input["shape"][1:3]) != (reference.height, reference.width):
        raise TFLiteError(
            f"The .tflite input is {lite.input['shape']}, the SavedModel's images are "
            f"{reference.height}x{reference.width}."
        )
    if lite.uint8_input:
        images = np.clip(np.round(images), 0, 255)
    ref = reference.logits(images)
    got = lite.logits(images)
    scale = max(float(np.max(np.abs(ref))), 1e-30)
    diff = float(np.max(np.abs(got - ref)))
    top_ref, top_got = ref.argmax(-1), got.argmax(-1)
    times = lite.latency_ms(images[0], runs=latency_runs)
    ops = model_ops(model)
    report = {
        "images": int(len(images)),
        "top1_agreement": float(np.mean(top_ref == top_got)),
        "max_abs_logit_diff": diff,
        "relative_logit_diff": diff / scale,
        "size_bytes": len(model),
        "latency_ms": float(np.median(times)),
        "num_threads": num_threads,
        "latency_runs": latency_runs,
        "input": {
            "dtype": np.dtype(lite.input["dtype"]).name,
            "shape": [int(d) for d in lite.input["shape"]],
            "quantization": [float(q) for q in lite.input["quantization"]],
        },
        "outputs": {k: np.dtype(d["dtype"]).name for k, d in lite.outputs.items()},
        "ops": dict(sorted(collections.Counter(n for n, _, _ in ops).items())),
        "num_ops": len(ops),
        "num_float_ops": len(float_ops(model)),
        "flex_ops": [],  # check_ops raised otherwise.
    }
    if labels is not None:
        report["top1_accuracy_tflite"] = float(np.mean(top_got == labels))
        report["top1_accuracy_saved_model"] = float(np.mean(top_ref == labels))
    return report
