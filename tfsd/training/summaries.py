"""Progress lines and TensorBoard summaries of a run (metrics, per-block keep rates)."""

from __future__ import annotations

import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from tfsd import figures
from tfsd.training.task import Task


class Progress:
    """A Keras progress bar with ETA on a terminal, periodic log lines otherwise."""

    def __init__(self, total: int, start: int):
        self.total, self.start, self.t0 = total, start, time.time()
        self.bar = keras.utils.Progbar(total) if sys.stdout.isatty() else None

    def update(self, step: int, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            self.bar.update(step, values=list(metrics.items()), finalize=step >= self.total)
            return
        done = step - self.start
        rate = done / max(time.time() - self.t0, 1e-9)
        eta = (self.total - step) / max(rate, 1e-9)
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        logging.info("step %d/%d %s eta=%ds", step, self.total, shown, int(eta))


def keep_rate_draws(task: Task, steps: int) -> np.ndarray:
    """Gate draws behind each block's realised keep rate over ``steps`` training steps.

    Sample mode draws one gate per example (the global batch per step); batch mode one per
    replica per step, or one per step when every replica draws the same gate
    (``sync_replicas``). The binomial standard error of a block's keep rate is
    ``sqrt(p (1 - p) / draws)``.
    """
    replicas = task.strategy.num_replicas_in_sync
    per_step = [
        task.config.batch_size if lay.mode == "sample" else 1 if lay.sync_replicas else replicas
        for lay in task.sd_layers
    ]
    return np.array(per_step, np.int64) * steps


def log_keep_rates(task: Task, keep_rates: np.ndarray, steps: int) -> None:
    """Per-block keep rates of the last ``steps`` steps, under the default summary writer.

    ``keep_rate/<block>`` scalars, a ``keep_rates`` histogram over blocks, and a
    ``keep_rate_vs_survival`` image: each block's realised rate against its survival
    probability ``p_l`` with a +-2 standard-error band for this many draws.
    """

    survival = np.array([lay.survival_prob for lay in task.sd_layers], np.float64)
    draws = keep_rate_draws(task, steps)
    for lay, rate in zip(task.sd_layers, keep_rates):
        tf.summary.scalar(f"keep_rate/{lay.name}", float(rate))
    # For tfsd.plot's band. build_model gives every block the same mode and sync_replicas, so
    # the count is the same for all; the minimum otherwise (a band never too narrow).
    tf.summary.scalar("gate_draws_per_step", float(draws.min()) / steps)
    tf.summary.histogram("keep_rates", keep_rates)
    fig = figures.keep_rate_figure(
        survival, keep_rates, draws,
        f"{task.config.model.name}: keep rate over {steps} steps",
    )  # fmt: skip
    tf.summary.image("keep_rate_vs_survival", figures.to_image(fig)[None])


def log_eval(task: Task, result: dict[str, float], writers, step: int) -> None:
    with writers["eval"].as_default(step=step):
        for k in ("top1", "top5", "loss"):
            tf.summary.scalar(k, result[k])
    logging.info(
        "eval at step %d: top1=%.4f top5=%.4f loss=%.4f (%d examples)",
        step, result["top1"], result["top5"], result["loss"], int(result["examples"]),
    )  # fmt: skip
