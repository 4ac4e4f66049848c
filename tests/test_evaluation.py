"""tfsd.training.evaluation (the library of ``tfsd.evaluate``) and ``tfsd.restore`` on a run.

Everything reads the shared `tiny_run` (12 steps, EMA 0.5, a 3-class image folder); the command
itself: tests/test_evaluate.py.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

import tfsd
from tests.conftest import TINY_RUN_CLASSES
from tests.helpers import tiny_config
from tfsd import data as data_lib
from tfsd.training import evaluation as evaluation_lib
from tfsd.training import run_dir

LABELS = sorted(TINY_RUN_CLASSES)  # label order: sorted folder names


def _eval_reference(model, config):
    """Independent count: argmax of the model's logits over the eval pipeline."""
    ds = data_lib.build_dataset(
        config.data, split="eval", global_batch_size=5, image_size=config.model.image_size
    )
    matrix = np.zeros((3, 3), np.int64)
    for images, labels in ds:
        predicted = np.argmax(model(images, training=False).numpy(), axis=-1)
        for t, p in zip(labels.numpy(), predicted):
            matrix[t, p] += 1
    return matrix


def test_evaluate_counts_match_an_independent_pass_and_the_training_eval(tiny_run, tmp_path):
    """References: an independent argmax count over the eval pipeline (re-implemented here), and
    the training loop's own final eval of the same run (`tiny_run.final`, a real artifact)."""
    model_dir, final = tiny_run.model_dir, tiny_run.final
    result = evaluation_lib.evaluate_run(str(model_dir), batch_size=7, output_dir=str(tmp_path))
    config = run_dir.load_run_config(str(model_dir))
    matrix = _eval_reference(tfsd.restore(str(model_dir)), config)
    np.testing.assert_array_equal(result["confusion_matrix"], matrix)
    assert result["examples"] == matrix.sum() == final["examples"]
    # The training loop's own final eval: the same final checkpoint (the run saves at its last
    # step), the same EMA weights and the same eval_batch computation (plain cross-entropy,
    # argmax top-1), so every metric agrees; only the batch size (7 here, the run's 8) changes
    # the order of the float sums.
    assert result["checkpoint"].endswith(f"ckpt-{final['step']}") and final["step"] == 12
    assert result["weights"] == "ema"
    assert result["top1"] == pytest.approx(final["top1"], abs=1e-6)
    assert result["top5"] == pytest.approx(final["top5"], rel=1e-5)
    assert result["loss"] == pytest.approx(final["loss"], rel=1e-5)
    assert result["top5"] == 1.0  # 3 classes: top-5 always holds the label
    rows = matrix.sum(axis=1)
    np.testing.assert_allclose(result["per_class_accuracy"], np.diag(matrix) / rows)
    assert result["class_names"] == LABELS and result["weights"] == "ema"
    saved = json.loads((tmp_path / "confusion_matrix.json").read_text())
    assert saved["confusion_matrix"] == matrix.tolist() and saved["class_names"] == LABELS
    png = tf.io.decode_png(tf.io.read_file(str(tmp_path / "confusion_matrix.png"))).numpy()
    assert png.shape[0] > 200 and png.shape[2] in (3, 4) and png.std() > 10  # a drawn picture
    report = evaluation_lib.format_report(result)
    assert f"top-1 {result['top1']:.4f}" in report and "red" in report


def test_restore_returns_ema_or_raw_weights_of_the_run(tiny_run):
    """Reference: run_dir.restore_run, and the checkpoint's tensors read directly."""
    model_dir = tiny_run.model_dir
    ema = tfsd.restore(str(model_dir))
    raw = tfsd.restore(str(model_dir), weights="raw")
    ref_ema, *_ = run_dir.restore_run(str(model_dir), weights="ema")
    for a, b in zip(ema.weights, ref_ema.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(
        not np.array_equal(a.numpy(), b.numpy())
        for a, b in zip(ema.trainable_weights, raw.trainable_weights)
    )
    first = str(model_dir / "checkpoints" / "ckpt-6")
    early = tfsd.restore(str(model_dir), weights="raw", checkpoint=first)
    reader = tf.train.load_checkpoint(first)
    kernel = next(v for v in early.weights if v.name == "kernel")
    # Each variable is saved once, under whichever object reached it first (often optimizer/).
    shapes = reader.get_variable_to_shape_map()
    names = [n for n, s in shapes.items() if s == list(kernel.shape) and "ema/" not in n]
    assert any(np.array_equal(kernel.numpy(), reader.get_tensor(n)) for n in names)
    assert not np.array_equal(kernel.numpy(), next(v for v in raw.weights if v.name == "kernel"))


def test_bad_runs_and_splits_get_clear_errors(tiny_run, tmp_path):
    with pytest.raises(run_dir.RunDirError, match="does not exist"):
        evaluation_lib.evaluate_run(str(tmp_path / "no_run"))
    run_dir.check_or_write_config(tiny_config(), str(tmp_path / "fresh"))
    with pytest.raises(run_dir.RunDirError, match="has no checkpoint"):
        evaluation_lib.evaluate_run(str(tmp_path / "fresh"))
    with pytest.raises(run_dir.RunDirError, match="has no checkpoint"):
        tfsd.restore(str(tmp_path / "fresh"))
    with pytest.raises(ValueError, match="split"):
        evaluation_lib.evaluate_run(
            str(tiny_run.model_dir), split="test", output_dir=str(tmp_path / "x")
        )
