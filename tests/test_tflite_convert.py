"""tfsd.serving.tflite_convert: float16, dynamic-range and int8 conversion, builtin ops only.

Agreement tests use the trained tiny models of tests/tflite_fixtures.py and compare each TFLite
model with its SavedModel (the real artifact) on `VERIFY` held-out images: ≥ 99% allows at most
2 disagreements of 200, ≥ 98% at most 4. Op checks use hand-written SavedModels.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import tflite_fixtures as fixtures
from tfsd.serving import tflite_convert, tflite_export, tflite_verify

SIZE, VERIFY = fixtures.SIZE, fixtures.VERIFY

# -------------------------------------------------------------------------------------------------
# Float16, dynamic range.
# -------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant,quantize",
    [(v, q) for v in fixtures.VARIANTS for q in ("float16", "dynamic")],
)
def test_float16_and_dynamic_range_agree(tmp_path_factory, variant, quantize):
    model, data = fixtures.serving(tmp_path_factory, variant), fixtures.eval_data()
    content = tflite_convert.convert(model, quantize)
    report = tflite_verify.verify_tflite(content, model, data.verification, latency_runs=5)
    assert report["top1_agreement"] >= 0.99, report["top1_agreement"]
    assert report["images"] == VERIFY
    weights = {"float16": "DEQUANTIZE", "dynamic": "FULLY_CONNECTED"}
    assert weights[quantize] in report["ops"]
    assert not any(n.startswith("Flex") for n in report["ops"])
    # Smaller than float (for a model this tiny the graph itself is a third of the file, so
    # the weights' 2x / 4x shows only in the benchmark's full-size models).
    if variant == "resnet":
        assert report["size_bytes"] < 0.8 * len(fixtures.float_tflite(tmp_path_factory, variant))


# -------------------------------------------------------------------------------------------------
# int8 calibration and quantization.
# -------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_uint8_io_takes_raw_pixels(tmp_path_factory):
    """The uint8 input has scale 1 and zero point 0: camera pixels go in as they are.

    The calibration images here never reach 0 or 255 in every channel, so the converter's own
    range (scale (max - min) / 255) would not be 1: the test fails if the range fix is lost.
    """
    model, data = fixtures.serving(tmp_path_factory, "resnet"), fixtures.eval_data()
    calibration = data.calibration * 0.9 + 10.0  # pixels in [10, 240)
    assert calibration.min() >= 10.0 and calibration.max() < 240.0
    calibrated = tflite_convert.calibrate_int8(model, calibration)
    content = tflite_convert.quantize_int8(calibrated, int8_io=True)
    lite = tflite_verify.LiteModel(content)
    assert lite.input["dtype"] == np.uint8
    assert lite.input["quantization"] == (1.0, 0)
    assert all(d["dtype"] == np.uint8 for d in lite.outputs.values())
    # Raw pixels straight into the interpreter, no client arithmetic; dequantized logits.
    pixels = np.clip(np.round(data.verification), 0, 255).astype(np.uint8)
    detail = lite.outputs["logits"]
    scale, zero_point = detail["quantization"]
    top = []
    for image in pixels:
        lite.interpreter.set_tensor(lite.input["index"], image[None])
        lite.interpreter.invoke()
        q = lite.interpreter.get_tensor(detail["index"])[0]
        top.append(np.argmax((q.astype(np.float32) - zero_point) * scale))
    reference = model.logits(pixels.astype(np.float32)).argmax(-1)
    assert np.mean(np.array(top) == reference) >= 0.98
    report = tflite_verify.verify_tflite(content, model, data.verification, latency_runs=5)
    assert report["input"]["quantization"] == [1.0, 0.0]
    assert report["top1_agreement"] >= 0.98


def test_int8_needs_representative_data(tmp_path):
    with pytest.raises(tflite_convert.TFLiteError, match="needs calibration images"):
        tflite_convert.calibrate_int8(None, np.zeros([0, SIZE, SIZE, 3], np.float32))
    with pytest.raises(tflite_convert.TFLiteError, match="representative data"):
        tflite_export.convert_and_verify(
            str(tmp_path / "sm"), str(tmp_path / "m.tflite"), quantize="int8"
        )
    assert not (tmp_path / "m.tflite").exists()


# -------------------------------------------------------------------------------------------------
# Builtin ops only.
# -------------------------------------------------------------------------------------------------


def _module_saved_model(path, body):
    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="images")])
        def serve(self, images):
            return {"logits": body(tf.reduce_mean(images, axis=[1, 2]))}

    m = M()
    tf.saved_model.save(m, str(path), signatures={"serving_default": m.serve})
    return str(path)


def test_op_outside_builtins_fails_with_its_name(tmp_path):
    path = _module_saved_model(tmp_path / "igamma", lambda x: tf.math.igamma(x + 1.0, x + 2.0))
    with pytest.raises(tflite_convert.TFLiteError, match=r"Igamma.*FlexIgamma.*builtin ops only"):
        tflite_convert.convert(tflite_convert.ServingModel(path), "none")


def test_random_op_is_refused(tmp_path):
    """TFLite now has a builtin RandomUniform, so a training-mode gate converts: tfsd refuses."""
    path = _module_saved_model(tmp_path / "random", lambda x: x * tf.random.uniform(tf.shape(x)))
    with pytest.raises(tflite_convert.TFLiteError, match="RANDOM_UNIFORM"):
        tflite_convert.convert(tflite_convert.ServingModel(path), "none")


def test_converting_twice_saves_once_and_matches_tf_converter(tmp_path):
    """`ServingModel.converter` reads one saved batch-1 SavedModel; the bytes are TF's own
    ``from_concrete_functions`` conversion's (which re-saves the model on every conversion)."""
    path = _module_saved_model(tmp_path / "scale", lambda x: tf.concat([x, 2.0 * x], -1))
    model = tflite_convert.ServingModel(path)
    first = tflite_convert.convert(model, "none")
    saved = model._batch1_dir  # noqa: SLF001
    assert tflite_convert.convert(model, "none") == first and model._batch1_dir == saved  # noqa: SLF001
    tf_converter = tf.lite.TFLiteConverter.from_concrete_functions([model.batch1], model.loaded)
    tf_converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    assert tf_converter.convert() == first
