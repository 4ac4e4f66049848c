"""``train_and_evaluate``: the training loop, read top to bottom (big_vision style).

Exact resume: the train data stream is a pure function of (seed, step) and every other random
state is in the checkpoint (the stochastic-depth step counters, Keras ``SeedGenerator`` states of
dropout layers, the optimizer, the EMA), so with ``config.deterministic=True`` a run killed and
resumed from a checkpoint ends with bit-identical weights to a run that never stopped, under every
strategy, without saving iterator state. See ``docs/training.md``.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import sys
import time
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging

from tfsd import config_lib, distribute
from tfsd import data as data_lib
from tfsd.training import finetune, run_dir, signals, summaries
from tfsd.training import step as step_lib
from tfsd.training import task as task_lib


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of the model's weights (replica 0's copy), to compare workers' final states."""
    h = hashlib.sha256()
    for v in model.weights:
        h.update(v.path.encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


def train_dataset(task: task_lib.Task, data_dir: str | None = None, start_step: int = 0) -> Any:
    """The distributed train stream from ``start_step``: a pure function of (seed, step), so a
    resumed run starts where the checkpointed one stopped."""
    return task.strategy.distribute_datasets_from_function(
        lambda ctx: _pipeline(task, "train", data_dir, ctx, start_step=start_step)
    )


def _pipeline(task: task_lib.Task, split: str, data_dir: str | None, ctx, **kwargs) -> Any:
    """One input pipeline's ``split`` of the task's dataset (its batch, image size and seed)."""
    config = task.config
    return data_lib.build_dataset(
        config.data,
        split=split,
        global_batch_size=config.batch_size,
        image_size=config.model.image_size,
        seed=config.seed,
        data_dir=data_dir,
        input_context=ctx,
        **kwargs,
    )


def eval_dataset(task: task_lib.Task, data_dir: str | None = None) -> tuple[Any, int]:
    """The distributed eval split and its step count: every example, full batches, every worker.

    The split is covered by ``steps`` full global batches (`step.eval_batches_per_pipeline`);
    the last real batch is padded with weight-0 examples and zero-weight batches follow
    (`step.pad_eval_batches`), so no replica sees an empty batch, shapes are static (XLA, TPU)
    and every worker runs the same number of steps. Metrics count real examples only.
    """
    config = task.config
    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    steps, batches = step_lib.eval_batches_per_pipeline(task, info.num_eval_examples)

    def dataset(ctx):
        return step_lib.pad_eval_batches(
            _pipeline(task, "eval", data_dir, ctx),
            ctx.get_per_replica_batch_size(config.batch_size),
            batches,
        )

    return task.strategy.distribute_datasets_from_function(dataset), steps


def check_eval_split(config: ml_collections.ConfigDict, num_eval_examples: int) -> None:
    """Refuses an eval split that yields no batch (it failed only after training, at the eval).

    Runs that iterate the split (one input pipeline) lose only a partial last batch to
    ``data.eval_drop_remainder``; the padded eval of `eval_dataset` keeps every other example.
    """
    if num_eval_examples < 1:
        raise config_lib.ConfigError(f"The eval split of {config.data.name} holds no examples.")
    if config.data.eval_drop_remainder and num_eval_examples < config.batch_size:
        raise config_lib.ConfigError(
            f"data.eval_drop_remainder=True drops every eval example: the split holds "
            f"{num_eval_examples}, fewer than one batch of {config.batch_size}. Set it to False "
            "or lower batch_size."
        )


def train_and_evaluate(config: ml_collections.ConfigDict, model_dir: str,
                       data_dir: str | None = None) -> dict[str, float]:  # fmt: skip
    """Trains ``config`` in ``model_dir`` (resuming from its latest checkpoint) and evaluates.

    On SIGTERM/SIGINT: stops within one step, saves a checkpoint and exits with 128 + signal
    (every worker of a multi-worker run stops at the same step).

    Returns:
      The final eval metrics (``top1``, ``top5``, ``loss``, ``examples``) plus ``step`` and
      ``weights_digest``.
    """
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    config_lib.validate(config)
    # The strategy first: MultiWorkerMirroredStrategy must exist before the runtime starts.
    strategy = distribute.get_strategy(config.distribute)
    chief = distribute.is_chief(strategy)
    # Nothing is written to model_dir until the config, data and model are validated: a
    # config.json left by a failed start held the next attempt to the failed settings. Here
    # only a resumed run's saved config is compared; it is written below, once all is built.
    run_dir.check_or_write_config(config, model_dir, write=False)
    task = task_lib.build_task(config, data_dir, strategy)

    checkpoint = run_dir.make_checkpoint(task)
    saver = run_dir.Saver(task, checkpoint, model_dir)
    start = run_dir.restore_latest(saver.manager, checkpoint)
    if start is not None:
        logging.info("Resumed from %s at step %d.", saver.manager.latest_checkpoint, start)
    elif config.init.source:
        # A fresh run only: a resumed one continues from its own weights.
        loaded = finetune.initialize_from(config, task.model, data_dir)
        if task.ema is not None:  # the average starts from the loaded weights, not random ones
            for shadow, source in zip(task.ema.shadows, task.ema.sources):
                shadow.assign(source.numpy())
        logging.info("Initialized %d layers from %s.", len(loaded), config.init.source)
    step = int(task.step.numpy())

    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    check_eval_split(config, info.num_eval_examples)
    iterator = iter(train_dataset(task, data_dir, start_step=step))
    eval_ds, eval_steps = eval_dataset(task, data_dir)
    # All validated: the first write of config.json.
    run_dir.check_or_write_config(
        config, model_dir, write=chief, num_replicas=strategy.num_replicas_in_sync
    )

    stop = tf.Variable(False, trainable=False, name="stop_requested")
    train_loop, eval_step = step_lib.make_train_loop(task, stop), step_lib.make_eval_fn(task)
    if chief:
        writers = {
            k: tf.summary.create_file_writer(os.path.join(model_dir, k)) for k in ("train", "eval")
        }
    else:
        writers = {k: tf.summary.create_noop_writer() for k in ("train", "eval")}
    watcher = signals.StopOnSignal(stop)
    progress = summaries.Progress(task.total_steps, step)
    every = config.checkpoint_every_steps
    eval_every = config.eval_every_steps
    last_saved = step
    stopped = False
    try:
        while step < task.total_steps and not stopped:
            # Host loops end exactly on checkpoint and eval boundaries.
            n = min(config.steps_per_loop, task.total_steps - step, every - step % every)
            if eval_every:
                n = min(n, eval_every - step % eval_every)
            t0 = time.time()
            sums = {k: v.numpy() for k, v in train_loop(iterator, tf.constant(n)).items()}
            keep_rates = sums.pop("keep_rates")
            sums = {k: float(v) for k, v in sums.items()}
            seconds = time.time() - t0
            # Only the all-reduced flag decides: a signal that lands after this loop's last
            # check is seen by every worker at the next loop's first check. Reading the local
            # `watcher.received` here stopped this worker while the others started the next loop
            # (both then died in mismatched collectives, nothing saved: issue 18).
            stopped = sums["stopped"] > 0
            done = int(sums["steps"])
            if not math.isfinite(sums["loss"]) or sums["finite"] != 1.0:
                raise FloatingPointError(
                    f"Training loss or weights became non-finite (loss {sums['loss']}) between "
                    f"steps {step} and {step + done}. "
                    f"Stopped without saving; the last good checkpoint is "
                    f"{saver.manager.latest_checkpoint or '(none)'}. Lower lr.base, check the "
                    "data, or use precision=float32."
                )
            step = int(task.step.numpy())
            if done:
                metrics = {
                    "loss": sums["loss"] / done,
                    "top1": sums["top1"] / max(sums["examples"], 1.0),
                    "lr": float(task.optimizer.learning_rate),
                    "images_per_sec": sums["examples"] / max(seconds, 1e-9),
                    "active_blocks": sums["active_blocks"] / done,
                }
                with writers["train"].as_default(step=step):
                    for k, v in metrics.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("stochastic_blocks", len(task.sd_layers))
                    if chief and task.sd_layers:
                        summaries.log_keep_rates(task, keep_rates / done, done)
                progress.update(step, metrics)
            if stopped:
                break
            if step % every == 0 or step >= task.total_steps:
                saver.save(step)
                last_saved = step
            if eval_every and step % eval_every == 0 and step < task.total_steps:
                result = step_lib.evaluate(task, eval_ds, eval_step, fixed_steps=eval_steps)
                summaries.log_eval(task, result, writers, step)
        if stopped:
            if last_saved != step or saver.manager.latest_checkpoint is None:
                saver.save(step)
            signum = watcher.received[0] if watcher.received else signal.SIGTERM
            logging.warning(
                "Signal %d%s: checkpoint saved at step %d; exiting.",
                signum, "" if watcher.received else " (on another worker)", step,
            )  # fmt: skip
            for w in writers.values():
                w.flush()
            sys.exit(128 + signum)
    finally:
        watcher.close()
    result = step_lib.evaluate(task, eval_ds, eval_step, fixed_steps=eval_steps)
    summaries.log_eval(task, result, writers, step)
    for w in writers.values():
        w.flush()
    result["step"] = step
    result["weights_digest"] = weights_digest(task.model)
    return result
