"""PNGs of a training run or of a config's survival schedule (the library of ``tfsd.plot``).

A run's pictures (``docs/evaluate_predict_plot.md``): ``survival_schedule.png`` (Huang et al.
2016, arXiv:1603.09382, Eq. 4 for the linear rule), ``curves.png`` (TensorBoard scalars of
``RUN/train`` and ``RUN/eval``), ``effective_depth.png`` (active blocks per step) and
``keep_rates.png`` (each block's realised keep rate against ``p_l`` with its binomial band).
"""

from __future__ import annotations

import glob
import os

import numpy as np
import tensorflow as tf

from tfsd import figures
from tfsd import layers as sd_layers
from tfsd.training import run_dir
from tfsd.training import task as task_lib


def read_scalars(log_dir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalar summaries of the event files in ``log_dir``: ``{tag: (steps, values)}``.

    Sorted by step; a step logged twice (a resumed run) keeps its last value. TF2's
    ``tf.summary.scalar`` stores each value as a rank-0 tensor (``value.tensor``); TF1 files
    use ``simple_value``: both are read.
    """
    points: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.HasField("tensor"):
                    array = tf.make_ndarray(value.tensor)
                    if array.ndim:
                        continue  # not a scalar
                    number = float(array)
                elif value.HasField("simple_value"):
                    number = float(value.simple_value)
                else:
                    continue
                points.setdefault(value.tag, {})[int(event.step)] = number
    out = {}
    for tag, by_step in points.items():
        steps = np.array(sorted(by_step), np.int64)
        out[tag] = steps, np.array([by_step[s] for s in steps], np.float64)
    return out


def plot_survival_schedule(survival: list[float], title: str):
    """Figure of ``survival[l]`` against block index ``l = 1..L`` (line 0 holds the values).

    ``l`` counts the stochastic-depth layers only. A rule may count blocks without a gate too:
    EfficientNet-B0's ``1 - r * i / 16`` runs over all 16 blocks, of which the 9 with an identity
    skip have a gate (``tfsd.models.efficientnet``): its 9 points are ``p_i`` at i = 2, 4, 6, 7, 9,
    10, 12, 13, 14 (0-based, block2b ... block6d).
    """
    fig = figures.new_figure()
    ax = fig.add_subplot()
    index = np.arange(1, len(survival) + 1)
    ax.plot(index, survival, "o-", markersize=3, label="survival probability $p_l$")
    mean = float(np.mean(survival)) if survival else float("nan")
    ax.axhline(mean, color="gray", linestyle="--", label=f"mean {mean:.3f}")
    ax.set_xlabel("stochastic-depth block l (in depth order)")
    ax.set_ylabel("$p_l$")
    ax.set_ylim(0.0, 1.05)
    ax.set_title(title)
    ax.legend(loc="lower left")
    fig.tight_layout()
    return fig


def plot_curves(train: dict, evaluation: dict, title: str):
    """Figure with loss (left) and top-1 (right), train and eval, against the step."""
    fig = figures.new_figure(10.0, 4.0)
    for i, tag in enumerate(("loss", "top1")):
        ax = fig.add_subplot(1, 2, i + 1)
        for name, scalars, style in (("train", train, "-"), ("eval", evaluation, "o-")):
            if tag in scalars:
                steps, values = scalars[tag]
                ax.plot(steps, values, style, markersize=4, label=name)
        ax.set_xlabel("step")
        ax.set_ylabel(tag)
        ax.set_title(f"{title}: {tag}")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_effective_depth(train: dict, survival: list[float], title: str):
    """Figure of ``active_blocks`` against the step (line 0), with ``sum(p_l)`` and ``L``."""
    fig = figures.new_figure()
    ax = fig.add_subplot()
    if "active_blocks" in train:
        steps, values = train["active_blocks"]
        ax.plot(steps, values, "-", label="active blocks (mean per step)")
    ax.axhline(sum(survival), color="gray", linestyle="--", label=f"expected {sum(survival):.2f}")
    ax.axhline(len(survival), color="black", linestyle=":", label=f"all {len(survival)} blocks")
    ax.set_xlabel("step")
    ax.set_ylabel("blocks")
    ax.set_ylim(0.0, len(survival) + 1.0)  # from 0: the depth saved is read off the gap to L
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def run_keep_rates(train: dict, names: list[str]) -> tuple[np.ndarray, int] | None:
    """Each block's keep rate over the whole logged run, and the training steps behind it.

    The ``keep_rate/<block>`` scalars are means over summary intervals of unequal length (the
    loop ends intervals on checkpoint and eval boundaries): they are weighted by the steps each
    covers (the gap to the previous logged step). None when the run logged no per-block rates
    (runs from before they were logged).
    """
    tags = [f"keep_rate/{n}" for n in names]
    if not names or any(t not in train for t in tags):
        return None
    steps = train[tags[0]][0]
    weights = np.diff(np.concatenate([[0], steps])).astype(np.float64)
    rates = np.array([np.sum(train[t][1] * weights) / np.sum(weights) for t in tags])
    return rates, int(steps[-1])


def _write(drawn: dict, output_dir: str, names: dict | None = None) -> dict:
    tf.io.gfile.makedirs(output_dir)
    out = {}
    for key, fig in drawn.items():
        path = os.path.join(output_dir, f"{(names or {}).get(key, key)}.png")
        figures.save_png(fig, path)
        out[key] = path, fig
    return out


def plot_config(config, output_dir: str) -> dict[str, tuple[str, object]]:
    """Writes ``survival_schedule_<model>.png`` of a config's model, without training.

    The model is built from ``config`` (``tfsd.training.task.build_model``: the same rule, survival
    probability and depth as a run would use); no dataset is read. The head's size does not
    change the schedule, so it has ``config.model.num_classes`` outputs, or one when that is 0
    (the dataset's count, which would need the dataset).

    Returns:
      ``{"survival_schedule": (png_path, matplotlib Figure)}``.
    """
    model = task_lib.build_model(config, num_classes=config.model.num_classes or 1)
    survival = [float(lay.survival_prob) for lay in sd_layers.stochastic_depth_layers(model)]
    name = config.model.name
    fig = plot_survival_schedule(survival, f"{name}: survival schedule ({len(survival)} blocks)")
    return _write({"survival_schedule": fig}, output_dir,
                  {"survival_schedule": f"survival_schedule_{name}"})  # fmt: skip


def plot_run(model_dir: str, output_dir: str | None = None) -> dict[str, tuple[str, object]]:
    """Writes the run's PNGs; returns ``{name: (png_path, matplotlib Figure)}``.

    Raises:
      tfsd.training.run_dir.RunDirError: ``model_dir`` is not a run with a checkpoint.
      FileNotFoundError: the run has no event files in ``RUN/train``.
    """
    model, config, _, _ = run_dir.restore_run(model_dir, weights="raw")
    blocks = sd_layers.stochastic_depth_layers(model)
    survival = [float(lay.survival_prob) for lay in blocks]
    train = read_scalars(os.path.join(model_dir, "train"))
    if not train:
        raise FileNotFoundError(f"{model_dir}/train holds no TensorBoard event files.")
    evaluation = read_scalars(os.path.join(model_dir, "eval"))
    name = config.model.name
    output_dir = output_dir or os.path.join(model_dir, "plots")
    drawn = {
        "survival_schedule": plot_survival_schedule(
            survival, f"{name}: survival schedule ({len(survival)} blocks)"
        ),
        "curves": plot_curves(train, evaluation, name),
        "effective_depth": plot_effective_depth(train, survival, f"{name}: effective depth"),
    }
    kept = run_keep_rates(train, [lay.name for lay in blocks])
    if kept is not None:
        rates, steps = kept
        per_step = train["gate_draws_per_step"][1][-1] if "gate_draws_per_step" in train else 0
        drawn["keep_rates"] = figures.keep_rate_figure(
            survival, rates, per_step * steps or None, f"{name}: keep rate over {steps} steps"
        )
    return _write(drawn, output_dir)
