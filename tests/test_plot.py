"""tfsd.plot: the PNGs of a run exist, decode, and show exactly the run's summaries."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import tiny_config
from tfsd import export, plot, train
from tfsd import layers as sd_layers


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("plot_run")
    c = tiny_config(total_steps=6, eval_every_steps=2)
    c.model.survival_prob = 0.5
    train.train_and_evaluate(c, str(model_dir))
    return model_dir


def _reference(log_dir, tag):
    """The tag's (steps, values) read by TensorBoard's own reader, independent of tfsd.plot."""
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors(tag)
    return [e.step for e in events], [float(tf.make_ndarray(e.tensor_proto)) for e in events]


def test_plots_exist_decode_and_show_the_runs_summaries(run, tmp_path):
    written = plot.plot_run(str(run), str(tmp_path))
    assert sorted(written) == ["curves", "effective_depth", "survival_schedule"]
    for path, _ in written.values():
        image = tf.io.decode_png(tf.io.read_file(path))
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
        assert int(tf.reduce_max(image)) > int(tf.reduce_min(image))  # not a blank canvas
    # Survival schedule: the model's own per-block probabilities (linear rule down to 0.5).
    model, *_ = export.restore_run(str(run), weights="raw")
    survival = [lay.survival_prob for lay in sd_layers.stochastic_depth_layers(model)]
    line = written["survival_schedule"][1].axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), survival)
    assert len(survival) == 9 and survival[-1] == pytest.approx(0.5)
    # Curves: train and eval loss and top-1 equal the event files' values step by step.
    curves = written["curves"][1].axes
    for ax, tag in zip(curves, ("loss", "top1")):
        for line, sub in zip(ax.lines, ("train", "eval")):
            steps, values = _reference(run / sub, tag)
            assert len(steps) == 3, (sub, steps)  # steps 2, 4, 6
            np.testing.assert_array_equal(line.get_xdata(), steps)
            np.testing.assert_allclose(line.get_ydata(), values, rtol=1e-6)
    # Effective depth: active_blocks per step, and the expected sum(p_l) as a reference line.
    ax = written["effective_depth"][1].axes[0]
    steps, values = _reference(run / "train", "active_blocks")
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), steps)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), values, rtol=1e-6)
    assert ax.lines[1].get_ydata()[0] == pytest.approx(sum(survival))


def test_cli_writes_the_pngs_and_refuses_a_missing_run(run, tmp_path):
    out = tmp_path / "png"
    done = subprocess.run(
        [sys.executable, "-m", "tfsd.plot", f"--model_dir={run}", f"--output_dir={out}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png", "effective_depth.png", "survival_schedule.png"
    ]  # fmt: skip
    assert str(out / "curves.png") in done.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "tfsd.plot", f"--model_dir={tmp_path / 'nothing'}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "tfsd.plot:" in bad.stderr
