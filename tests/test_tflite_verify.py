"""tfsd.serving.tflite_verify: LiteRT verification reports and the eval images they use.

The float conversion of each trained tiny model (tests/tflite_fixtures.py) is the reference case
of a report: the TFLite model must reproduce its SavedModel (the real artifact) to 1e-4 of the
logit scale and agree on all `VERIFY` held-out images.
"""

import numpy as np
import pytest
import tensorflow as tf

from tests import tflite_fixtures as fixtures
from tests.helpers import tiny_config
from tfsd import data as data_lib
from tfsd.serving import tflite_convert, tflite_verify

SIZE = fixtures.SIZE


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(fixtures.VARIANTS))
def test_float_conversion_matches_saved_model(tmp_path_factory, variant):
    model, data = fixtures.serving(tmp_path_factory, variant), fixtures.eval_data()
    content = fixtures.float_tflite(tmp_path_factory, variant)  # convert(model, "none")
    report = tflite_verify.verify_tflite(
        content, model, data.verification, data.labels, latency_runs=5
    )
    assert report["relative_logit_diff"] <= 1e-4, report["relative_logit_diff"]
    assert report["top1_agreement"] == 1.0
    assert report["input"] == {"dtype": "float32", "shape": [1, SIZE, SIZE, 3],
                               "quantization": [0.0, 0.0]}  # fmt: skip
    assert set(report["outputs"]) == {"logits", "probabilities"}
    assert report["num_float_ops"] == report["num_ops"] > 10
    assert not any(n.startswith("Flex") or n in tflite_convert.RANDOM_OPS for n in report["ops"])
    # Probabilities are the softmax of the logits, as in the SavedModel.
    lite = tflite_verify.LiteModel(content)
    lite._feed(data.verification[0])
    lite.interpreter.invoke()
    np.testing.assert_allclose(
        lite._read("probabilities"), tf.nn.softmax(lite._read("logits")).numpy(), atol=1e-6
    )


def test_eval_data_comes_from_the_run_and_is_disjoint(tmp_path):
    """Calibration = the first eval images, verification = the next; never the same image.

    Reference: the eval split built directly with tfsd.data from the run's config.
    """
    config = tiny_config()
    (tmp_path / "config.json").write_text(config.to_json())
    got = tflite_verify.load_eval_data(
        image_size=16, model_dir=str(tmp_path), calibration_steps=20, verify_images=30
    )
    ds = data_lib.build_dataset(config.data, split="eval", global_batch_size=50, image_size=16)
    x, y = (t.numpy() for t in next(iter(ds)))
    np.testing.assert_array_equal(got.calibration, x[:20])
    np.testing.assert_array_equal(got.verification, x[20:])
    np.testing.assert_array_equal(got.labels, y[20:])
    distances = np.abs(got.calibration[:, None] - got.verification[None]).max((2, 3, 4))
    assert distances.min() > 1.0
    with pytest.raises(ValueError, match="must be disjoint"):
        tflite_verify.load_eval_data(image_size=16, model_dir=str(tmp_path), verify_images=10_000)
    named = tflite_verify.load_eval_data(
        image_size=16, representative_config="cifar10_resnet110:runlocal",
        calibration_steps=4, verify_images=4,
    )  # fmt: skip
    assert named.calibration.shape == (4, 16, 16, 3) and named.labels.shape == (4,)
