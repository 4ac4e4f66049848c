"""Evaluation, prediction and ``tfsd.restore`` of a training run (and of its export)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import tfsd
from tests.helpers import run_cli, tiny_config, write_image_folder
from tfsd import data as data_lib
from tfsd import evaluate as evaluate_cmd
from tfsd import predict as predict_cmd
from tfsd.serving import predict as predict_lib
from tfsd.serving import saved_model as saved_model_lib
from tfsd.training import evaluation as evaluation_lib
from tfsd.training import loop as loop_lib
from tfsd.training import run_dir

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("red", "green", "blue")
LABELS = sorted(CLASSES)  # label order: sorted folder names


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 12-step run with EMA on a 3-class image folder (names = folder names)."""
    root = tmp_path_factory.mktemp("evalrun")
    images = write_image_folder(root / "images", CLASSES, per_class=16)
    config = tiny_config(total_steps=12, ema_decay=0.5, checkpoint_every_steps=6)
    config.data.name = f"folder:{images}"
    config.data.num_classes = None
    config.data.folder_eval_fraction = 0.25
    config.data.preprocess = "none"
    config.batch_size = 8
    final = loop_lib.train_and_evaluate(config, str(root / "run"))
    return root / "run", images, final


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


def test_evaluate_counts_match_an_independent_pass_and_the_training_eval(run, tmp_path):
    model_dir, _, final = run
    result = evaluation_lib.evaluate_run(str(model_dir), batch_size=7, output_dir=str(tmp_path))
    config = run_dir.load_run_config(str(model_dir))
    matrix = _eval_reference(tfsd.restore(str(model_dir)), config)
    np.testing.assert_array_equal(result["confusion_matrix"], matrix)
    assert result["examples"] == matrix.sum() == final["examples"]
    # The training loop's own final eval (EMA weights, same checkpoint) agrees.
    assert result["top1"] == pytest.approx(final["top1"], abs=1e-6)
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


def test_restore_returns_ema_or_raw_weights_of_the_run(run):
    model_dir, _, _ = run
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


def test_predict_run_and_its_export_give_the_same_top_classes(run, tmp_path):
    model_dir, images, _ = run
    files = sorted(str(p) for p in images.rglob("*.*"))[:4]
    got = predict_lib.predict_run(str(model_dir), files)
    # Reference: the run's model on the run's eval preprocessing.
    model, config, _, _ = run_dir.restore_run(str(model_dir))
    fn = data_lib.make_eval_image_fn(config.data, config.model.image_size)
    x = tf.stack([fn(tf.io.read_file(f)) for f in files])
    probs = tf.nn.softmax(model(x, training=False)).numpy()
    for row, p in zip(got, probs):
        assert len(row) == 3 and [s for _, s in row] == sorted((s for _, s in row), reverse=True)
        best = int(np.argmax(p))
        assert row[0][0] == LABELS[best] and row[0][1] == pytest.approx(p[best], abs=1e-6)
    base = tmp_path / "exports"
    saved_model_lib.export_run(str(model_dir), str(base))
    from_export = predict_lib.predict_export(str(base), files)  # the base path: highest version
    assert predict_lib.resolve_export_dir(str(base)) == str(base / "1")
    for a, b in zip(got, from_export):
        assert [n for n, _ in a] == [n for n, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-4)


def test_bad_inputs_get_clear_errors(run, tmp_path):
    model_dir, images, _ = run
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(predict_lib.PredictError, match="notes.jpg is not an image"):
        predict_lib.predict_run(str(model_dir), [str(text)])
    with pytest.raises(predict_lib.PredictError, match="no such file"):
        predict_lib.predict_run(str(model_dir), [str(tmp_path / "missing.png")])
    with pytest.raises(predict_lib.PredictError, match="neither a SavedModel"):
        predict_lib.predict_export(str(tmp_path), [str(next(images.rglob("*.png")))])
    with pytest.raises(run_dir.RunDirError, match="does not exist"):
        evaluation_lib.evaluate_run(str(tmp_path / "no_run"))
    run_dir.check_or_write_config(tiny_config(), str(tmp_path / "fresh"))
    with pytest.raises(run_dir.RunDirError, match="has no checkpoint"):
        evaluation_lib.evaluate_run(str(tmp_path / "fresh"))
    with pytest.raises(run_dir.RunDirError, match="has no checkpoint"):
        tfsd.restore(str(tmp_path / "fresh"))
    with pytest.raises(ValueError, match="split"):
        evaluation_lib.evaluate_run(str(model_dir), split="test", output_dir=str(tmp_path / "x"))


@pytest.mark.slow
def test_evaluate_and_predict_command_lines(run, tmp_path):
    model_dir, images, _ = run
    # In-process: flags are defined when a command runs (tfsd.cli).
    code, out, err = run_cli(
        evaluate_cmd, f"--model_dir={model_dir}", "--weights=raw", f"--output_dir={tmp_path / 'ev'}"
    )
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])["evaluation"]
    assert summary["examples"] > 0 and "per-class accuracy" in out
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    image = str(next(images.rglob("*.png")))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    code, out, err = run_cli(predict_cmd, f"--model_dir={model_dir}", image)
    assert code == 0, err[-3000:]
    top = json.loads(out.strip().splitlines()[-1])["predictions"][image]
    assert len(top) == 3 and {n for n, _ in top} == set(CLASSES)
    code, out, err = run_cli(predict_cmd, f"--model_dir={model_dir}", str(bad))
    assert code != 0 and "bad.png is not an image" in err
    code, out, err = run_cli(evaluate_cmd, f"--model_dir={tmp_path / 'none'}")
    assert code != 0 and "does not exist" in err
