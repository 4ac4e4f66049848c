"""tfsd.serving.predict and the ``tfsd.predict`` command (in-process, tests.helpers.run_cli).

A run's checkpoint and its export answer alike; read from the shared `tiny_run` and its export
`tiny_export`.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import TINY_RUN_CLASSES
from tests.helpers import png_of_zeros, run_cli
from tfsd import data as data_lib
from tfsd import predict as predict_cmd
from tfsd.serving import predict as predict_lib
from tfsd.training import run_dir

LABELS = sorted(TINY_RUN_CLASSES)  # label order: sorted folder names


def test_predict_run_and_its_export_give_the_same_top_classes(tiny_run, tiny_export):
    """Reference: the run's model on the run's eval preprocessing (re-run here); the export is
    `tiny_export`, written by export_run from the same run."""
    files = sorted(str(p) for p in tiny_run.images.rglob("*.*"))[:4]
    got = predict_lib.predict_run(str(tiny_run.model_dir), files)
    model, config, _, _ = run_dir.restore_run(str(tiny_run.model_dir))
    fn = data_lib.make_eval_image_fn(config.data, config.model.image_size)
    x = tf.stack([fn(tf.io.read_file(f)) for f in files])
    probs = tf.nn.softmax(model(x, training=False)).numpy()
    for row, p in zip(got, probs):
        assert len(row) == 3 and [s for _, s in row] == sorted((s for _, s in row), reverse=True)
        best = int(np.argmax(p))
        assert row[0][0] == LABELS[best] and row[0][1] == pytest.approx(p[best], abs=1e-6)
    base = tiny_export.parent  # holds version 1 only
    from_export = predict_lib.predict_export(str(base), files)  # the base path: highest version
    assert predict_lib.resolve_export_dir(str(base)) == str(base / "1")
    for a, b in zip(got, from_export):
        assert [n for n, _ in a] == [n for n, _ in b]
        np.testing.assert_allclose([s for _, s in a], [s for _, s in b], atol=1e-4)


def test_bad_inputs_get_clear_errors(tiny_run, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(predict_lib.PredictError, match="notes.jpg is not an image"):
        predict_lib.predict_run(str(tiny_run.model_dir), [str(text)])
    bomb = tmp_path / "bomb.png"  # 183 KiB, 8000 x 8000: refused from its header, not decoded
    bomb.write_bytes(png_of_zeros(8000, 8000))
    with pytest.raises(predict_lib.PredictError, match="bomb.png: the image is over the limit"):
        predict_lib.read_images([str(bomb)])
    with pytest.raises(predict_lib.PredictError, match="no such file"):
        predict_lib.predict_run(str(tiny_run.model_dir), [str(tmp_path / "missing.png")])
    with pytest.raises(predict_lib.PredictError, match="neither a SavedModel"):
        predict_lib.predict_export(str(tmp_path), [str(next(tiny_run.images.rglob("*.png")))])


def test_predict_command_prints_the_top_classes_and_refuses_a_non_image(tiny_run, tmp_path):
    image = str(next(tiny_run.images.rglob("*.png")))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG but not really")
    code, out, err = run_cli(predict_cmd, f"--model_dir={tiny_run.model_dir}", image)
    assert code == 0, err[-3000:]
    top = json.loads(out.strip().splitlines()[-1])["predictions"][image]
    assert len(top) == 3 and {n for n, _ in top} == set(TINY_RUN_CLASSES)
    code, out, err = run_cli(predict_cmd, f"--model_dir={tiny_run.model_dir}", str(bad))
    assert code != 0 and "bad.png is not an image" in err
