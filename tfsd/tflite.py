"""TFLite / LiteRT conversion: ``python -m tfsd.tflite --saved_model=BASE/N --output=m.tflite``.

Takes a SavedModel written by `tfsd.export` to a verified ``.tflite`` file for phones and edge
devices, in one of four quantizations (the TFLite post-training quantization guide,
https://ai.google.dev/edge/litert/models/post_training_quantization):

* ``none``: float32 weights and activations;
* ``float16``: float16 weights, float32 compute on CPU (about half the size);
* ``dynamic``: int8 weights, activations quantized on the fly by the kernels that support it;
* ``int8``: full-integer post-training quantization, calibrated on eval images of the run's
  dataset; ``int8_io=True`` also makes the input and outputs uint8.

**What is converted.** The SavedModel's ``serving_default`` signature at batch 1: the SavedModel
is loaded, its signature is wrapped in a function with a fixed ``[1, H, W, 3]`` input and the
``logits`` and ``probabilities`` outputs only, and ``TFLiteConverter.from_concrete_functions``
converts it with the loaded object as its trackable (tensorflow/lite/python/lite.py: this is
what ``from_saved_model`` does for a TF2 SavedModel, minus the choice of signature outputs and
shapes). ``from_saved_model`` itself would keep the export's dynamic batch (a ``-1`` shape
signature) and its top-k ``classes`` / ``scores`` and string ``class_names`` outputs, which a
phone app computes from ``probabilities`` in a few lines and which do not quantize. Conversion
allows builtin ops only (``TFLITE_BUILTINS``, plus ``TFLITE_BUILTINS_INT8`` for int8): a model
that needs a Flex (Select TF) op fails with the op's name (tensorflow/tensorflow#26137, #41558),
and a model that holds a random op fails too (a stochastic-depth layer left in training mode;
tfsd exports are folded and hold none).

**uint8 input is the camera's pixels.** tfsd models take raw pixels in [0, 255] and normalise
inside, so the int8 model's input range is fixed to exactly [0, 255] after calibration: the
uint8 input has scale 1 and zero point 0 and a client passes pixels as they are. (The
converter's public path sets the input range from the calibration images, e.g. scale 0.94 when
no calibration pixel reaches 255: tested.)

**Verification after every conversion** (`verify_tflite`): the ``.tflite`` runs in LiteRT
(``ai_edge_litert.interpreter.Interpreter``; ``tf.lite.Interpreter`` is deprecated in TF 2.21)
on held-out eval images, disjoint from the calibration images, and is compared with the
SavedModel's ``serving_default``: max absolute logit difference, top-1 agreement (and top-1
accuracy of both where labels are known), size, batch-1 latency at a fixed ``num_threads`` and
the op list. The table is printed and a JSON report is written beside the model.

**Automatic float fallback** (``int8_fallback="auto"``). EfficientNet's swish and
squeeze-excite lose 15+ points of top-1 under naive int8 post-training quantization
(tensorflow/tpu#549, #669; tensorflow/tensorflow#55660). When int8 top-1 agreement is below
``min_agreement``, TF's ``QuantizationDebugger``
(tensorflow/lite/tools/optimize/debugging/python/debugger.py) measures each quantized op's
error with NumericVerify ops (layer by layer, on calibration images); the ops with the largest
error against their signal (`rank_quantization_error`) are kept in float
through ``mlir_quantize(denylisted_nodes=...)`` (tensorflow/lite/python/convert.py), 1, 2, 4,
... of them, until the agreement holds or the float-op budget (a fraction of the quantized ops)
is spent. The model is calibrated once; each attempt only re-quantizes. The report lists the
ops kept in float and what they cost in size and latency against the plain int8 model. Model
Garden (``official/vision/serving/export_tflite_lib.py``) offers the same mechanism with a
manual ``denylisted_ops`` list and no report.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import math
import os
import re
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from tfsd import cli

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
FALLBACKS = ("none", "auto")
SIGNATURE = "serving_default"
INPUT_KEY = "images"
OUTPUT_KEYS = ("logits", "probabilities")
# Ops whose presence in an inference graph means it is not one: a stochastic-depth layer left in
# training mode draws Bernoulli gates with these.
RANDOM_OPS = ("RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL")
DEFAULT_CALIBRATION_STEPS = 200  # TF's guide: ~100-500 samples; Model Garden uses 500.
DEFAULT_VERIFY_IMAGES = 500
DEFAULT_MIN_AGREEMENT = 0.98
DEFAULT_MAX_FLOAT_FRACTION = 0.25  # at most a quarter of the quantized ops kept in float.
DEBUG_IMAGES = 32  # calibration images the QuantizationDebugger runs to rank ops.
_TMP_TAG = ".tfsd-tflite-tmp-"


class TFLiteError(RuntimeError):
    """A conversion or verification that cannot be made; no output file was written."""


# -------------------------------------------------------------------------------------------------
# Eval data: calibration and held-out verification images.
# -------------------------------------------------------------------------------------------------


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
    from tfsd import data as data_lib
    from tfsd import train

    if model_dir and representative_config:
        raise ValueError("Give at most one of model_dir and representative_config.")
    if calibration_steps < 0 or verify_images < 1:
        raise ValueError(
            f"calibration_steps must be >= 0 and verify_images >= 1, got {calibration_steps} "
            f"and {verify_images}."
        )
    if model_dir:
        from tfsd import export

        data_config = export.load_run_config(model_dir).data
        source = f"eval split of the run {model_dir}"
    elif representative_config:
        data_config = train.load_config(representative_config).data
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


# -------------------------------------------------------------------------------------------------
# The SavedModel side.
# -------------------------------------------------------------------------------------------------


class ServingModel:
    """A tfsd SavedModel's ``serving_default``: the batch-1 function to convert and the reference.

    Args:
      path: a SavedModel directory (``BASE/<version>``) written by `tfsd.export`.

    Raises:
      TFLiteError: no SavedModel there, or no ``serving_default`` taking float ``images``
        ``[batch, H, W, 3]`` and returning ``logits``.
    """

    def __init__(self, path: str):
        if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
            raise TFLiteError(
                f"No SavedModel at {path} (no saved_model.pb). Pass a version directory "
                "BASE/<N> written by python -m tfsd.export."
            )
        self.path = path
        self.loaded = tf.saved_model.load(path)
        if SIGNATURE not in self.loaded.signatures:
            raise TFLiteError(f"{path} has no {SIGNATURE!r} signature.")
        self.signature = self.loaded.signatures[SIGNATURE]
        spec = self.signature.structured_input_signature[1].get(INPUT_KEY)
        outputs = self.signature.structured_outputs
        if (
            spec is None
            or spec.dtype != tf.float32
            or spec.shape.rank != 4
            or spec.shape[-1] != 3
            or None in spec.shape[1:3]
            or "logits" not in outputs
        ):
            raise TFLiteError(
                f"{path}: {SIGNATURE} must take float32 {INPUT_KEY!r} [batch, H, W, 3] and "
                f"return 'logits' (a tfsd export); it takes {spec} and returns {list(outputs)}."
            )
        self.height, self.width = int(spec.shape[1]), int(spec.shape[2])
        self.output_keys = [k for k in OUTPUT_KEYS if k in outputs]
        signature = self.signature
        keys = self.output_keys

        @tf.function(
            input_signature=[tf.TensorSpec([1, self.height, self.width, 3], tf.float32, INPUT_KEY)]
        )
        def batch1(images):
            out = signature(**{INPUT_KEY: images})
            return {k: out[k] for k in keys}

        self.batch1 = batch1.get_concrete_function()

    def converter(self) -> tf.lite.TFLiteConverter:
        """A fresh converter of the batch-1 function (a converter converts only once)."""
        return tf.lite.TFLiteConverter.from_concrete_functions([self.batch1], self.loaded)

    def logits(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """``serving_default``'s logits for float images in [0, 255]."""
        out = []
        for i in range(0, len(images), batch_size):
            x = tf.constant(images[i : i + batch_size], tf.float32)
            out.append(self.signature(**{INPUT_KEY: x})["logits"].numpy())
        return np.concatenate(out)


# -------------------------------------------------------------------------------------------------
# Conversion.
# -------------------------------------------------------------------------------------------------


def _unsupported_ops(message: str) -> list[str]:
    """TF op names in a converter error about ops outside TFLite's builtin set."""
    names = re.findall(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op", message)
    for line in re.findall(r"(?:Flex|Custom|Select TF) ops: ([^\n]+)", message):
        names += [n.strip() for n in line.split(",") if n.strip()]
    return sorted({n.removeprefix("Flex") for n in names})


def _convert(converter: tf.lite.TFLiteConverter, what: str) -> bytes:
    """Runs a converter; a model needing non-builtin ops gets an error naming them."""
    # ConverterError lives in tensorflow/lite/python/convert_phase.py (raised by lite.py).
    from tensorflow.lite.python.convert_phase import ConverterError

    try:
        return converter.convert()
    except ConverterError as e:
        ops = _unsupported_ops(str(e))
        if ops:
            raise TFLiteError(
                f"{what} needs TensorFlow op(s) {', '.join(ops)} that are not TFLite builtins "
                f"(they would need Flex / Select TF ops: {', '.join('Flex' + o for o in ops)}), "
                "which phone runtimes do not ship. tfsd converts with builtin ops only."
            ) from e
        raise TFLiteError(f"Converting {what} failed: {str(e).splitlines()[0][:500]}") from e


def _representative(images: np.ndarray):
    def gen() -> Iterator[list[np.ndarray]]:
        for x in images:
            yield [np.asarray(x[None], np.float32)]

    return gen


def convert(model: ServingModel, quantize: str = "none") -> bytes:
    """Converts ``model`` with no calibration: ``none`` | ``float16`` | ``dynamic``."""
    if quantize not in ("none", "float16", "dynamic"):
        raise ValueError(
            f"convert handles none, float16 and dynamic; got {quantize!r} (int8: calibrate_int8)."
        )
    converter = model.converter()
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return _check_ops(_convert(converter, f"{model.path} ({quantize})"), model.path)


def calibrate_int8(model: ServingModel, calibration_images: np.ndarray) -> bytes:
    """The float model with calibration statistics, input range fixed to [0, 255].

    ``_experimental_calibrate_only`` stops the converter after calibration, as the
    QuantizationDebugger does (debugger.py, ``_set_converter_options_for_calibration``);
    `quantize_int8` then quantizes it, as many times as the fallback needs.
    """
    if calibration_images is None or len(calibration_images) == 0:
        raise TFLiteError(
            "int8 quantization needs representative data: pass --model_dir=RUN or "
            "--representative_config=NAME[:ARG] (eval images calibrate the activations)."
        )
    from tensorflow.lite.tools import flatbuffer_utils

    converter = model.converter()
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS,
    ]  # fmt: skip
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = _representative(calibration_images)
    converter._experimental_calibrate_only = True  # noqa: SLF001  (see the docstring)
    calibrated = _convert(converter, f"{model.path} (int8 calibration)")
    # The calibrator records each tensor's observed min / max in its quantization field; the
    # input's is set to the full pixel range so the input quantizes with scale 1: uint8 pixels
    # map exactly, whatever the calibration images' extremes were.
    fb = flatbuffer_utils.convert_bytearray_to_object(calibrated)
    graph = fb.subgraphs[0]
    for index in graph.inputs:
        graph.tensors[index].quantization.min = [0.0]
        graph.tensors[index].quantization.max = [255.0]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(fb))


def quantize_int8(
    calibrated: bytes,
    *,
    int8_io: bool = False,
    denylisted_nodes: Sequence[str] = (),
    debug: bool = False,
) -> bytes:
    """Full-integer quantization of a calibrated model, ``denylisted_nodes`` kept in float.

    ``int8_io``: uint8 input (scale 1, zero point 0) and uint8 outputs, as Model Garden's
    ``int8_full``; otherwise float input and outputs. ``debug`` adds NumericVerify ops for the
    QuantizationDebugger (float I/O).
    """
    from tensorflow.lite.python import convert as tfl_convert

    io_type = tf.uint8 if int8_io and not debug else tf.float32
    return tfl_convert.mlir_quantize(
        calibrated,
        input_data_type=io_type,
        output_data_type=io_type,
        enable_numeric_verify=debug,
        denylisted_nodes=list(denylisted_nodes) or None,
    )


# -------------------------------------------------------------------------------------------------
# Inspecting and running a .tflite model.
# -------------------------------------------------------------------------------------------------


def model_ops(model: bytes) -> list[tuple[str, str, int]]:
    """``(op name, first output tensor name, output type)`` of every op of the main graph.

    Custom ops (Flex ops among them) are named by their custom code, e.g. ``FlexIgamma``. Read
    from the flatbuffer (tensorflow/lite/tools/flatbuffer_utils.py), so a model that LiteRT
    cannot load can still be inspected.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    fb = flatbuffer_utils.convert_bytearray_to_object(model)
    graph = fb.subgraphs[0]
    ops = []
    for op in graph.operators:
        code = fb.operatorCodes[op.opcodeIndex]
        name = (
            code.customCode.decode()
            if code.customCode
            else flatbuffer_utils.opcode_to_name(fb, op.opcodeIndex)
        )
        out = graph.tensors[op.outputs[0]] if len(op.outputs) else None
        ops.append((name, out.name.decode() if out else "", out.type if out else -1))
    return ops


def _check_ops(model: bytes, what: str) -> bytes:
    names = [name for name, _, _ in model_ops(model)]
    flex = sorted({n for n in names if n.startswith("Flex")})
    if flex:
        raise TFLiteError(f"{what} holds Flex ops {flex}: not runnable by builtin LiteRT.")
    random_ops = sorted({n for n in names if n in RANDOM_OPS})
    if random_ops:
        raise TFLiteError(
            f"{what} holds random ops {random_ops}: not an inference graph (a stochastic-depth "
            "layer left in training mode?). Export with python -m tfsd.export, which folds it."
        )
    return model


def float_ops(model: bytes) -> list[tuple[str, str]]:
    """Compute ops with a float32 output (Quantize / Dequantize at the boundaries excluded)."""
    from tensorflow.lite.python import schema_py_generated as schema

    return [
        (name, tensor)
        for name, tensor, dtype in model_ops(model)
        if dtype == schema.TensorType.FLOAT32 and name not in ("QUANTIZE", "DEQUANTIZE")
    ]


class LiteModel:
    """A ``.tflite`` model in LiteRT's interpreter, run at batch 1 with fixed ``num_threads``."""

    def __init__(self, model: bytes, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

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
    _check_ops(model, "the .tflite model")
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
        "flex_ops": [],  # _check_ops raised otherwise.
    }
    if labels is not None:
        report["top1_accuracy_tflite"] = float(np.mean(top_got == labels))
        report["top1_accuracy_saved_model"] = float(np.mean(top_ref == labels))
    return report


# -------------------------------------------------------------------------------------------------
# int8 with automatic float fallback.
# -------------------------------------------------------------------------------------------------


def _noise_to_signal(
    float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int
) -> float:
    """RMS quantization error of one op over the spread of its float output.

    The denominator is at least one quantization step, so a near-constant tensor (a squeeze-
    excite gate on a 1x1 map) is not ranked by dividing by ~0.
    """
    error = (quantized.astype(np.float32) - zero_point) * scale - float_values
    return float(np.sqrt(np.mean(error**2)) / max(float(np.std(float_values)), scale))


def rank_quantization_error(calibrated: bytes, images: np.ndarray) -> list[dict[str, Any]]:
    """Quantized ops by error, worst first, from QuantizationDebugger layer statistics.

    Each op runs on the quantized output of the op before (NumericVerify ops compare it with the
    float op on the same input), so an op's error is its own. Ranked by noise-to-signal ratio
    (RMS error over the float output's standard deviation), not by the debugger guide's RMSE /
    scale: RMSE / scale is ~0.29 (uniform rounding noise, 1/sqrt(12)) for almost every op, and
    on a tiny EfficientNet keeping the top ops by it in float did not raise agreement, while
    the ops whose error is large against their signal (squeeze-excite expand convs and gates)
    are the ones that move the logits (measured while building this; README, "TFLite").

    Returns:
      ``[{"node", "op", "noise_to_signal", "rmse_over_scale"}]``; ``node`` is the tensor name
      ``denylisted_nodes`` takes.
    """
    from tensorflow.lite.tools.optimize.debugging.python import debugger

    debug_model = quantize_int8(calibrated, debug=True)
    options = debugger.QuantizationDebugOptions(
        layer_direct_compare_metrics={"noise_to_signal": _noise_to_signal}
    )
    with warnings.catch_warnings():
        # The debugger runs TF's own (deprecated) tf.lite.Interpreter: NumericVerify is a debug
        # op of that runtime. Verification and latency use LiteRT.
        warnings.simplefilter("ignore", UserWarning)
        dbg = debugger.QuantizationDebugger(
            quant_debug_model_content=debug_model,
            debug_dataset=_representative(images[:DEBUG_IMAGES]),
            debug_options=options,
        )
        dbg.run()
    dump = io.StringIO()
    dbg.layer_statistics_dump(dump)
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(float(row["mean_squared_error"]))
        rows.append({
            "node": row["tensor_name"],
            "op": row["op_name"],
            "noise_to_signal": float(row["noise_to_signal"]),
            "rmse_over_scale": rmse / scale if scale > 0 else math.inf,
        })  # fmt: skip
    rows.sort(key=lambda r: -r["noise_to_signal"])
    return rows


def int8_with_fallback(
    model: ServingModel,
    data: EvalData,
    *,
    int8_io: bool = False,
    fallback: str = "none",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION,
    num_threads: int = 1,
    latency_runs: int = 50,
) -> tuple[bytes, dict[str, Any]]:
    """int8 conversion, then (``fallback="auto"``) float fallback of the worst ops if needed.

    Returns:
      ``(model bytes, report)``: the report is `verify_tflite`'s for the returned model plus
      ``fallback``: the attempts (float-op count, agreement, size, latency), the ops kept in
      float, the budget, and the plain int8 model's numbers for comparison.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"int8_fallback must be one of {FALLBACKS}, got {fallback!r}.")
    if not 0.0 < min_agreement <= 1.0 or not 0.0 <= max_float_fraction <= 1.0:
        raise ValueError(
            f"min_agreement must be in (0, 1] and max_float_fraction in [0, 1], got "
            f"{min_agreement} and {max_float_fraction}."
        )
    calibrated = calibrate_int8(model, data.calibration)
    verify_kwargs = dict(num_threads=num_threads, latency_runs=latency_runs)
    plain = quantize_int8(calibrated, int8_io=int8_io)
    plain_report = verify_tflite(plain, model, data.verification, data.labels, **verify_kwargs)
    left_float = float_ops(plain)
    if fallback == "none" and left_float:
        raise TFLiteError(
            f"{len(left_float)} op(s) have no int8 kernel and stay float "
            f"({sorted({n for n, _ in left_float})}); use --int8_fallback=auto to accept "
            "float ops, or --quantize=dynamic."
        )
    info: dict[str, Any] = {
        "mode": fallback,
        "min_agreement": min_agreement,
        "int8_top1_agreement": plain_report["top1_agreement"],
        "attempts": [],
        "float_nodes": [],
    }
    best, best_report = plain, plain_report
    if fallback == "auto" and plain_report["top1_agreement"] < min_agreement:
        ranked = rank_quantization_error(calibrated, data.calibration)
        budget = int(math.floor(max_float_fraction * len(ranked)))
        info.update(
            budget_float_ops=budget,
            quantized_ops=len(ranked),
            int8_size_bytes=plain_report["size_bytes"],
            int8_latency_ms=plain_report["latency_ms"],
        )
        # 1, 2, 4, ... float ops, then the whole budget: log2(budget) re-quantizations at most,
        # each without re-calibration.
        counts = [2**i for i in range(budget.bit_length()) if 2**i < budget]
        counts += [budget] if budget > 0 else []
        for count in counts:
            nodes = [r["node"] for r in ranked[:count]]
            candidate = quantize_int8(calibrated, int8_io=int8_io, denylisted_nodes=nodes)
            report = verify_tflite(
                candidate, model, data.verification, data.labels, **verify_kwargs
            )
            info["attempts"].append({
                "float_ops": count, "top1_agreement": report["top1_agreement"],
                "size_bytes": report["size_bytes"], "latency_ms": report["latency_ms"],
            })  # fmt: skip
            logging.info(
                "Float fallback of %d ops: agreement %.4f", count, report["top1_agreement"]
            )
            if report["top1_agreement"] > best_report["top1_agreement"]:
                best, best_report = candidate, report
                info["float_nodes"] = ranked[:count]
            if report["top1_agreement"] >= min_agreement:
                break
        if info["float_nodes"]:
            info["size_cost"] = best_report["size_bytes"] / plain_report["size_bytes"]
            info["latency_cost"] = best_report["latency_ms"] / plain_report["latency_ms"]
    info["meets_min_agreement"] = best_report["top1_agreement"] >= min_agreement
    best_report["fallback"] = info
    return best, best_report


# -------------------------------------------------------------------------------------------------
# Writing the file.
# -------------------------------------------------------------------------------------------------


def _check_output(path: str, overwrite: bool) -> None:
    if tf.io.gfile.isdir(path):
        raise TFLiteError(f"{path} is a directory; --output names the .tflite file.")
    if tf.io.gfile.exists(path) and not overwrite:
        raise TFLiteError(f"{path} exists; pass --overwrite to replace it. Nothing was written.")


def write_atomic(path: str, content: bytes, *, overwrite: bool = False) -> None:
    """Writes ``content`` to ``path`` through a temporary file and one rename.

    A reader never sees a partial file. Without ``overwrite`` an existing file is never replaced,
    even one that appears while writing (a hard link fails on an existing name, atomically).
    """
    _check_output(path, overwrite)
    directory = os.path.dirname(path) or "."
    tf.io.gfile.makedirs(directory)
    tmp = os.path.join(directory, f"{_TMP_TAG}{uuid.uuid4().hex}")
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(content)
    try:
        if "://" in path:
            tf.io.gfile.rename(tmp, path, overwrite=overwrite)
        elif overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise TFLiteError(f"{path} appeared while writing; nothing was overwritten.") from e
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def report_path(output: str) -> str:
    """Where the JSON report of ``output`` goes: ``model.tflite`` → ``model.tflite.json``."""
    return output + ".json"


# -------------------------------------------------------------------------------------------------
# One command: convert, verify, report.
# -------------------------------------------------------------------------------------------------


def convert_and_verify(
    saved_model: str,
    output: str,
    *,
    quantize: str = "none",
    model_dir: str | None = None,
    representative_config: str | None = None,
    data_dir: str | None = None,
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    int8_io: bool = False,
    int8_fallback: str = "none",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION,
    num_threads: int = 1,
    latency_runs: int = 50,
    overwrite: bool = False,
    verify_only: bool = False,
    data: EvalData | None = None,
) -> dict[str, Any]:
    """Converts ``saved_model`` to ``output`` and verifies it; or verifies an existing file.

    Args:
      saved_model: a version directory ``BASE/<N>`` of `tfsd.export`.
      output: the ``.tflite`` path; the JSON report goes to ``output + ".json"``.
      quantize: ``none`` | ``float16`` | ``dynamic`` | ``int8``.
      model_dir / representative_config: where eval images come from (the run's dataset, or a
        named config such as ``cifar10_resnet110:runlocal``); int8 needs one.
      calibration_steps: calibration images (batch 1 each), the first of the eval split.
      verify_images: held-out verification images, the ones after the calibration images,
        whatever the quantization: every conversion (and ``verify_only``) with the same data
        flags is verified on the same images, never on calibration images.
      int8_io: int8 only: uint8 input (raw pixels, scale 1, zero point 0) and outputs.
      int8_fallback: ``none`` | ``auto`` (see `int8_with_fallback`).
      min_agreement: the int8 top-1 agreement the fallback aims for.
      max_float_fraction: the fallback's budget, a fraction of the quantized ops.
      num_threads: LiteRT threads for the latency measurement.
      latency_runs: timed invokes (median reported).
      overwrite: replace an existing ``output``.
      verify_only: verify the existing ``output`` against ``saved_model``; convert nothing.
      data: eval images already loaded (tests); overrides the data flags.

    Returns:
      The report (also written as JSON beside ``output``).

    Raises:
      ValueError: bad arguments. TFLiteError: a conversion that cannot be made or verified, or an
        existing output without ``overwrite``; nothing is written then.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantize!r}; choose one of {QUANTIZATIONS}.")
    if int8_io and quantize != "int8":
        raise ValueError("int8_io needs quantize='int8' (integer I/O needs integer activations).")
    if int8_fallback not in FALLBACKS:
        raise ValueError(f"int8_fallback must be one of {FALLBACKS}, got {int8_fallback!r}.")
    if num_threads < 1 or latency_runs < 1:
        raise ValueError("num_threads and latency_runs must be >= 1.")
    if verify_only:
        if not tf.io.gfile.exists(output):
            raise TFLiteError(f"--verify: {output} does not exist.")
    else:
        _check_output(output, overwrite)  # before minutes of conversion, not after.
    if (
        quantize == "int8"
        and not verify_only
        and data is None
        and not (model_dir or representative_config)
    ):
        raise TFLiteError(
            "int8 quantization needs representative data: pass --model_dir=RUN or "
            "--representative_config=NAME[:ARG] (eval images calibrate the activations)."
        )
    model = ServingModel(saved_model)
    if model.height != model.width:
        raise TFLiteError(
            f"Eval images are square; {saved_model} takes {model.height}x{model.width}."
        )
    if data is None:
        data = load_eval_data(
            image_size=model.height, model_dir=model_dir,
            representative_config=representative_config, data_dir=data_dir,
            calibration_steps=calibration_steps,
            verify_images=verify_images,
        )  # fmt: skip
    verify_kwargs = dict(num_threads=num_threads, latency_runs=latency_runs)
    start = time.perf_counter()
    if verify_only:
        with tf.io.gfile.GFile(output, "rb") as f:
            content = f.read()
        report = verify_tflite(content, model, data.verification, data.labels, **verify_kwargs)
    elif quantize == "int8":
        content, report = int8_with_fallback(
            model, data, int8_io=int8_io, fallback=int8_fallback, min_agreement=min_agreement,
            max_float_fraction=max_float_fraction, **verify_kwargs,
        )  # fmt: skip
    else:
        content = convert(model, quantize)
        report = verify_tflite(content, model, data.verification, data.labels, **verify_kwargs)
    report = {
        "model": output,
        "saved_model": saved_model,
        "quantization": "verify" if verify_only else quantize,
        "int8_io": int8_io,
        "data": data.source,
        "calibration_images": 0 if verify_only or quantize != "int8" else len(data.calibration),
        "seconds": round(time.perf_counter() - start, 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **report,
    }
    if not verify_only:
        write_atomic(output, content, overwrite=overwrite)
    write_atomic(report_path(output), json.dumps(report, indent=2).encode(), overwrite=True)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a two-column text table."""
    rows = [
        ("model", report["model"]),
        ("quantization", report["quantization"] + (" (uint8 I/O)" if report["int8_io"] else "")),
        ("size", f"{report['size_bytes'] / 1024:.1f} KiB"),
        ("verification images", f"{report['images']} ({report['data']})"),
        ("top-1 agreement", f"{report['top1_agreement']:.4f}"),
        ("max |logit diff|", f"{report['max_abs_logit_diff']:.3g} "
                             f"({report['relative_logit_diff']:.3g} of the logit scale)"),
        ("latency (batch 1)", f"{report['latency_ms']:.3f} ms median, "
                              f"{report['num_threads']} thread(s)"),
        ("input", f"{report['input']['dtype']} {report['input']['shape']} "
                  f"scale/zero point {report['input']['quantization']}"),
        ("ops", f"{report['num_ops']} ({report['num_float_ops']} float), no Flex op"),
    ]  # fmt: skip
    if "top1_accuracy_tflite" in report:
        acc = (report["top1_accuracy_tflite"], report["top1_accuracy_saved_model"])
        rows.append(("top-1 accuracy", f"{acc[0]:.4f} tflite, {acc[1]:.4f} SavedModel"))
    fb = report.get("fallback")
    if fb:
        rows.append(("int8 agreement before fallback", f"{fb['int8_top1_agreement']:.4f}"))
        if fb["float_nodes"]:
            kept = [f"{n['op']} {n['node'].split(';')[0]}" for n in fb["float_nodes"]]
            rows.append(("ops kept in float", ", ".join(kept)))
            cost = f"size x{fb['size_cost']:.3f}, latency x{fb['latency_cost']:.3f}"
            rows.append(("fallback cost", cost + " vs plain int8"))
        rows.append(("meets --min_agreement", str(fb["meets_min_agreement"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


# -------------------------------------------------------------------------------------------------
# Command line.
# -------------------------------------------------------------------------------------------------


def _define_flags() -> list[str]:
    f = flags
    defined = dict(
        saved_model=f.DEFINE_string("saved_model", None, "SavedModel version dir, BASE/<N>."),
        output=f.DEFINE_string("output", None, "The .tflite file (report: OUTPUT.json)."),
        quantize=f.DEFINE_enum("quantize", "none", list(QUANTIZATIONS), "Quantization."),
        representative_config=f.DEFINE_string(
            "representative_config", None, "Eval images of this config (NAME[:ARG])."
        ),
        calibration_steps=f.DEFINE_integer(
            "calibration_steps", DEFAULT_CALIBRATION_STEPS, "int8 calibration images."
        ),
        verify_images=f.DEFINE_integer(
            "verify_images", DEFAULT_VERIFY_IMAGES, "Held-out verification images."
        ),
        int8_io=f.DEFINE_bool("int8_io", False, "int8: uint8 input (raw pixels) and outputs."),
        int8_fallback=f.DEFINE_enum(
            "int8_fallback", "none", list(FALLBACKS), "auto: keep the worst ops in float."
        ),
        min_agreement=f.DEFINE_float(
            "min_agreement", DEFAULT_MIN_AGREEMENT, "Target int8 top-1 agreement."
        ),
        max_float_fraction=f.DEFINE_float(
            "max_float_fraction", DEFAULT_MAX_FLOAT_FRACTION, "Fallback budget (of quantized ops)."
        ),
        num_threads=f.DEFINE_integer("num_threads", 1, "LiteRT threads for the latency."),
        overwrite=f.DEFINE_bool("overwrite", False, "Replace an existing --output."),
        verify=f.DEFINE_bool("verify", False, "Verify the existing --output; convert nothing."),
    )
    return list(defined)


_COMMAND = cli.Command(_define_flags)


def main(argv: list[str]) -> None:
    v = _COMMAND.values()
    for required in ("saved_model", "output"):
        if not v[required]:
            raise app.UsageError(f"--{required} is required.")
    try:
        report = convert_and_verify(
            v["saved_model"], v["output"], quantize=v["quantize"], model_dir=v["model_dir"],
            representative_config=v["representative_config"], data_dir=v["data_dir"],
            calibration_steps=v["calibration_steps"], verify_images=v["verify_images"],
            int8_io=v["int8_io"], int8_fallback=v["int8_fallback"],
            min_agreement=v["min_agreement"], max_float_fraction=v["max_float_fraction"],
            num_threads=v["num_threads"], overwrite=v["overwrite"], verify_only=v["verify"],
        )  # fmt: skip
    except (TFLiteError, ValueError, FileNotFoundError) as e:
        sys.exit(f"tfsd.tflite: {e}")
    print(format_report(report))
    fb = report.get("fallback")
    if fb and not fb["meets_min_agreement"]:
        print(
            f"WARNING: top-1 agreement {report['top1_agreement']:.4f} is below --min_agreement="
            f"{fb['min_agreement']}"
            + ("" if fb["mode"] == "auto" else "; try --int8_fallback=auto")
        )
    print(json.dumps({"tflite": report["model"], "report": report_path(report["model"])}))


def run_main() -> None:
    """Entry point of ``python -m tfsd.tflite`` and the ``tfsd-tflite`` console script."""
    _COMMAND.run(main)


if __name__ == "__main__":
    run_main()


__all__ = [
    "EvalData",
    "LiteModel",
    "QUANTIZATIONS",
    "ServingModel",
    "TFLiteError",
    "calibrate_int8",
    "convert",
    "convert_and_verify",
    "float_ops",
    "int8_with_fallback",
    "load_eval_data",
    "model_ops",
    "quantize_int8",
    "rank_quantization_error",
    "verify_tflite",
    "write_atomic",
]
