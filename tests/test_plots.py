"""tfsd.training.plots (the library of ``tfsd.plot``): the PNGs of a run exist, decode, and show
exactly the run's summaries. The run is the shared `tiny_run`; the command: tests/test_plot.py."""

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tfsd import config_names
from tfsd import layers as sd_layers
from tfsd.training import plots as plots_lib
from tfsd.training import run_dir


def _reference(log_dir, tag):
    """The tag's (steps, values) read by TensorBoard's own reader, independent of tfsd.plot."""
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors(tag)
    return [e.step for e in events], [float(tf.make_ndarray(e.tensor_proto)) for e in events]


def test_plots_exist_decode_and_show_the_runs_summaries(tiny_run, tmp_path):
    """Reference: the run's event files read by TensorBoard's EventAccumulator, and the model's
    own survival probabilities. tiny_run: 12 steps in host loops of 2 (train summaries at steps
    2, 4, ..., 12), evals at steps 4 and 8 and the final one at 12."""
    run = tiny_run.model_dir
    written = plots_lib.plot_run(str(run), str(tmp_path))
    assert sorted(written) == ["curves", "effective_depth", "keep_rates", "survival_schedule"]
    for path, _ in written.values():
        image = tf.io.decode_png(tf.io.read_file(path))
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.shape[2] in (3, 4)
        assert int(tf.reduce_max(image)) > int(tf.reduce_min(image))  # not a blank canvas
    # Survival schedule: the model's own per-block probabilities (linear rule down to 0.5).
    model, *_ = run_dir.restore_run(str(run), weights="raw")
    survival = [lay.survival_prob for lay in sd_layers.stochastic_depth_layers(model)]
    line = written["survival_schedule"][1].axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), survival)
    assert len(survival) == 3 and survival[-1] == pytest.approx(0.5)  # test_resnet: 3 blocks
    # Curves: train and eval loss and top-1 equal the event files' values step by step.
    curves = written["curves"][1].axes
    logged = {"train": 6, "eval": 3}  # steps 2, 4, ..., 12; steps 4, 8, 12
    for ax, tag in zip(curves, ("loss", "top1")):
        for line, sub in zip(ax.lines, ("train", "eval")):
            steps, values = _reference(run / sub, tag)
            assert len(steps) == logged[sub], (sub, steps)
            np.testing.assert_array_equal(line.get_xdata(), steps)
            np.testing.assert_allclose(line.get_ydata(), values, rtol=1e-6)
    # Effective depth: active_blocks per step, and the expected sum(p_l) as a reference line.
    ax = written["effective_depth"][1].axes[0]
    steps, values = _reference(run / "train", "active_blocks")
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), steps)
    np.testing.assert_allclose(ax.lines[0].get_ydata(), values, rtol=1e-6)
    assert ax.lines[1].get_ydata()[0] == pytest.approx(sum(survival))
    # Keep rates: each block's kept fraction over the run (6 summaries over equal intervals of 2
    # steps, so the plain mean of its summaries), against p_l with the +-2 sigma band of 12
    # draws (batch mode, one gate per block per step).
    ax = written["keep_rates"][1].axes[0]
    names = [lay.name for lay in sd_layers.stochastic_depth_layers(model)]
    means = [np.mean(_reference(run / "train", f"keep_rate/{n}")[1]) for n in names]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), means, rtol=1e-6)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), survival)
    assert _reference(run / "train", "gate_draws_per_step")[1] == [1.0] * 6
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    p = np.array(survival)
    half = 2 * np.sqrt(p * (1 - p) / 12)
    np.testing.assert_allclose([band.max(), band.min()], [(p + half).max(), (p - half).min()])


def test_config_mode_plots_a_schedule_without_training(tmp_path):
    """``plot_config`` builds the config's model (no run, no dataset) and plots its schedule:
    cifar_resnet110's 54 blocks on the paper's linear rule p_l = 1 - l / 54 * (1 - 0.5)
    (hand-computed reference)."""
    written = plots_lib.plot_config(config_names.load_config("cifar10_resnet110"), str(tmp_path))
    path, fig = written["survival_schedule"]
    assert path == str(tmp_path / "survival_schedule_cifar_resnet110.png")
    assert tf.io.decode_png(tf.io.read_file(path)).shape[0] > 100
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), 1 - np.arange(1, 55) / 54 * 0.5, rtol=1e-12)
