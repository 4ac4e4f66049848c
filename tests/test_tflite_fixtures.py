"""tests/tflite_fixtures.py: the stored trained weights fit today's builders and keep their meaning.

Default tier: a builder change that the weight files (tests/data/tflite_*.npz) no longer fit fails
here, in seconds, instead of in the slow tier's TFLite agreement tests.
"""

import numpy as np
import pytest

from tests import tflite_fixtures as fixtures

# Measured when the files were written (python -m tests.tflite_fixtures, 2026-12-05, AMD EPYC):
# top-1 on the 200 verification images of 10 synthetic classes (chance: 0.1).
TRAINED_TOP1 = {"resnet": 0.935, "effnet": 0.75}


@pytest.mark.parametrize("variant", list(fixtures.VARIANTS))
def test_stored_weights_load_into_todays_builder_with_their_recorded_accuracy(variant):
    # Raises on other shapes, or a top-1 more than one image (0.0075) from the recorded one.
    model = fixtures.load_trained(variant)
    with np.load(fixtures.weights_file(variant), allow_pickle=False) as stored:
        assert [str(p) for p in stored["paths"]] == [w.path for w in model.weights]
        assert float(stored["verify_top1"]) == pytest.approx(TRAINED_TOP1[variant], abs=1e-9)


def _stored_copy(tmp_path, monkeypatch, **changes) -> None:
    """The stored ResNet file with ``changes`` (arrays by key), as `WEIGHTS_DIR` from now on."""
    with np.load(fixtures.weights_file("resnet"), allow_pickle=False) as stored:
        arrays = {k: stored[k] for k in stored.files}
    np.savez(tmp_path / "tflite_resnet.npz", **{**arrays, **changes})
    monkeypatch.setattr(fixtures, "WEIGHTS_DIR", tmp_path)


def test_a_file_that_no_longer_fits_the_builder_is_refused(tmp_path, monkeypatch):
    last = len(fixtures.build("resnet").weights) - 1
    _stored_copy(tmp_path, monkeypatch, **{f"w{last}": np.zeros((3, 3), "float32")})
    with pytest.raises(AssertionError, match="the builder changed; regenerate it with"):
        fixtures.load_trained("resnet")


def test_weights_that_lost_their_accuracy_are_refused(tmp_path, monkeypatch):
    # The untrained model's weights under the trained model's record: weights of the right
    # shapes that are not the trained ones are caught by what the model computes.
    untrained = fixtures.build("resnet")
    arrays = {f"w{i}": w.numpy() for i, w in enumerate(untrained.weights)}
    _stored_copy(tmp_path, monkeypatch, **arrays)
    with pytest.raises(AssertionError, match=r"no longer mean what they meant"):
        fixtures.load_trained("resnet")
