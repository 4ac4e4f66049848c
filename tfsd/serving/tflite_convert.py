"""TFLite / LiteRT conversion of a tfsd export's ``serving_default`` at batch 1.

The SavedModel's signature is wrapped in a function with a fixed ``[1, H, W, 3]`` input and the
``logits`` and ``probabilities`` outputs only, saved once as a SavedModel with the loaded object
(what ``TFLiteConverter.from_concrete_functions`` does on every conversion,
tensorflow/lite/python/lite.py) and converted from there, with builtin ops only: a model that
needs a Flex op or holds a random op fails with the op's name. int8 is calibrated once
(`calibrate_int8`, the input range fixed to [0, 255] so uint8 pixels map with scale 1) and
quantized as often as the fallback needs (`quantize_int8`). See ``docs/tflite.md``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.lite.python import convert as tfl_convert
from tensorflow.lite.python import lite as tfl_lite
from tensorflow.lite.python import schema_py_generated as schema

# ConverterError lives in tensorflow/lite/python/convert_phase.py (raised by lite.py).
from tensorflow.lite.python.convert_phase import ConverterError
from tensorflow.lite.tools import flatbuffer_utils

QUANTIZATIONS = ("none", "float16", "dynamic", "int8")


SIGNATURE = "serving_default"


INPUT_KEY = "images"


OUTPUT_KEYS = ("logits", "probabilities")


# Ops whose presence in an inference graph means it is not one: a stochastic-depth layer left in
# training mode draws Bernoulli gates with these.
RANDOM_OPS = ("RANDOM_UNIFORM", "RANDOM_STANDARD_NORMAL", "MULTINOMIAL")


class TFLiteError(RuntimeError):
    """A conversion or verification that cannot be made; no output file was written."""


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
        self._batch1_dir: str | None = None

    def converter(self) -> tf.lite.TFLiteConverter:
        """A fresh converter of the batch-1 function (a converter converts only once).

        ``TFLiteConverter.from_concrete_functions(...).convert()`` saves the function with its
        trackable object to a temporary SavedModel and converts that
        (tensorflow/lite/python/lite.py, ``_convert_as_saved_model``), on every conversion:
        about two thirds of a conversion's time (measured on the tiny B0 of the tests). The same
        SavedModel is saved here once per `ServingModel` and every converter reads it, without
        gradient functions (TF saves them; a conversion never reads them). The converted bytes
        are the same (checked for none, float16, dynamic and calibrated int8 on the tests' tiny
        B0; tests/test_tflite_convert.py checks a small module).
        """
        if self._batch1_dir is None:
            directory = tempfile.mkdtemp(prefix="tfsd-tflite-batch1-")
            weakref.finalize(self, shutil.rmtree, directory, True)
            options = tf.saved_model.SaveOptions(
                save_debug_info=True, experimental_custom_gradients=False
            )
            tf.saved_model.save(
                self.loaded, directory, signatures={SIGNATURE: self.batch1}, options=options
            )
            self._batch1_dir = directory
        # The model type from_concrete_functions records in the .tflite's conversion metadata.
        tfl_lite.TFLiteConverterBase._set_original_model_type(  # noqa: SLF001
            tfl_lite.conversion_metadata_fb.ModelType.TF_CONCRETE_FUNCTIONS
        )
        return tfl_lite.TFLiteSavedModelConverterV2(
            self._batch1_dir, {tf.saved_model.SERVING}, [SIGNATURE]
        )

    def logits(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """``serving_default``'s logits for float images in [0, 255]."""
        out = []
        for i in range(0, len(images), batch_size):
            x = tf.constant(images[i : i + batch_size], tf.float32)
            out.append(self.signature(**{INPUT_KEY: x})["logits"].numpy())
        return np.concatenate(out)


def _unsupported_ops(message: str) -> list[str]:
    """TF op names in a converter error about ops outside TFLite's builtin set."""
    names = re.findall(r"'tf\.([A-Za-z0-9_]+)' op is neither a custom op nor a flex op", message)
    for line in re.findall(r"(?:Flex|Custom|Select TF) ops: ([^\n]+)", message):
        names += [n.strip() for n in line.split(",") if n.strip()]
    return sorted({n.removeprefix("Flex") for n in names})


def _convert(converter: tf.lite.TFLiteConverter, what: str) -> bytes:
    """Runs a converter; a model needing non-builtin ops gets an error naming them."""

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


def representative_dataset(images: np.ndarray):
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
    return check_ops(_convert(converter, f"{model.path} ({quantize})"), model.path)


def calibrate_int8(model: ServingModel, calibration_images: np.ndarray) -> bytes:
    """The float model with calibration statistics, input range fixed to [0, 255].

    ``_experimental_calibrate_only`` stops the converter after calibration, as the
    QuantizationDebugger does (debugger.py, ``_set_converter_options_for_calibration``);
    `quantize_int8` then quantizes it, as many times as the fallback needs.
    """
    if calibration_images is None or len(calibration_images) == 0:
        raise TFLiteError(
            "int8 quantization needs calibration images and got none: give --calibration_steps "
            ">= 1 with --model_dir=RUN or --representative_config=NAME[:ARG]."
        )

    converter = model.converter()
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS,
    ]  # fmt: skip
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(calibration_images)
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

    io_type = tf.uint8 if int8_io and not debug else tf.float32
    return tfl_convert.mlir_quantize(
        calibrated,
        input_data_type=io_type,
        output_data_type=io_type,
        enable_numeric_verify=debug,
        denylisted_nodes=list(denylisted_nodes) or None,
    )


def model_ops(model: bytes) -> list[tuple[str, str, int]]:
    """``(op name, first output tensor name, output type)`` of every op of the main graph.

    Custom ops (Flex ops among them) are named by their custom code, e.g. ``FlexIgamma``. Read
    from the flatbuffer (tensorflow/lite/tools/flatbuffer_utils.py), so a model that LiteRT
    cannot load can still be inspected.
    """

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


def check_ops(model: bytes, what: str) -> bytes:
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

    return [
        (name, tensor)
        for name, tensor, dtype in model_ops(model)
        if dtype == schema.TensorType.FLOAT32 and name not in ("QUANTIZE", "DEQUANTIZE")
    ]
