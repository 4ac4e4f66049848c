"""tfsd.plot: the PNGs of a run exist, decode, and show exactly the run's summaries."""

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.helpers import run_cli, tiny_config
from tfsd import config_names
from tfsd import layers as sd_layers
from tfsd import plot as plot_cmd
from tfsd.training import loop as loop_lib
from tfsd.training import plots as plots_lib
from tfsd.training import run_dir


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("plot_run")
    c = tiny_config(total_steps=6, eval_every_steps=2)
    c.model.survival_prob = 0.5
    loop_lib.train_and_evaluate(c, str(model_dir))
    return model_dir


def _reference(log_dir, tag):
    """The tag's (steps, values) read by TensorBoard's own reader, independent of tfsd.plot."""
    acc = EventAccumulator(str(log_dir), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors(tag)
    return [e.step for e in events], [float(tf.make_ndarray(e.tensor_proto)) for e in events]


def test_plots_exist_decode_and_show_the_runs_summaries(run, tmp_path):
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
    # Keep rates: each block's kept fraction over the run (steps 2, 4, 6: equal intervals, so
    # the plain mean of its three summaries), against p_l with the +-2 sigma band of 6 draws
    # (batch mode, one replica: one gate per block per step).
    ax = written["keep_rates"][1].axes[0]
    names = [lay.name for lay in sd_layers.stochastic_depth_layers(model)]
    means = [np.mean(_reference(run / "train", f"keep_rate/{n}")[1]) for n in names]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), means, rtol=1e-6)
    np.testing.assert_allclose(ax.lines[1].get_ydata(), survival)
    assert _reference(run / "train", "gate_draws_per_step")[1] == [1.0, 1.0, 1.0]
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    p = np.array(survival)
    half = 2 * np.sqrt(p * (1 - p) / 6)
    np.testing.assert_allclose([band.max(), band.min()], [(p + half).max(), (p - half).min()])


def test_cli_writes_the_pngs_and_refuses_a_missing_run(run, tmp_path):
    out = tmp_path / "png"
    code, stdout, err = run_cli(plot_cmd, f"--model_dir={run}", f"--output_dir={out}")
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png", "effective_depth.png", "keep_rates.png", "survival_schedule.png"
    ]  # fmt: skip
    assert str(out / "curves.png") in stdout
    code, _, err = run_cli(plot_cmd, f"--model_dir={tmp_path / 'nothing'}")
    assert code != 0 and "tfsd.plot:" in err


def test_config_mode_plots_a_schedule_without_training(tmp_path):
    """``--config=NAME`` builds the config's model (no run, no dataset) and plots its schedule:
    cifar_resnet110's 54 blocks on the paper's linear rule p_l = 1 - l / 54 * (1 - 0.5)."""
    written = plots_lib.plot_config(config_names.load_config("cifar10_resnet110"), str(tmp_path))
    path, fig = written["survival_schedule"]
    assert path == str(tmp_path / "survival_schedule_cifar_resnet110.png")
    assert tf.io.decode_png(tf.io.read_file(path)).shape[0] > 100
    line = fig.axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), 1 - np.arange(1, 55) / 54 * 0.5, rtol=1e-12)
    # The CLI, with a config override; both modes at once is a usage error.
    code, stdout, err = run_cli(
        plot_cmd, "--config=efficientnet_b0", "--config.model.survival_prob=0.6",
        f"--output_dir={tmp_path}",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert str(tmp_path / "survival_schedule_efficientnet_b0.png") in stdout
    code, _, err = run_cli(
        plot_cmd, "--config=efficientnet_b0", f"--model_dir={tmp_path}",
        f"--output_dir={tmp_path}",
    )  # fmt: skip
    assert code != 0 and "not both" in err
