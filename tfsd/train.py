"""Train and evaluate a tfsd model: ``python -m tfsd.train --config=NAME[:ARG] --model_dir=DIR``.

One readable file, top to bottom: command line and config resolution → run directory and config
check → model, optimizer, EMA → data → the distributed training step → evaluation →
checkpoints and resume → the loop. Configs are ``configs/NAME.py`` files (``get_config(arg)``
returning an ``ml_collections.ConfigDict``, as in big_vision); overrides come from the command
line as ``--config.lr.base=0.05``, and an unknown key fails at once with a close match.

Exact resume: all randomness is stateless and keyed on saved state (the model's stochastic-depth
step counters, the data iterator, the seed), so with ``--config.deterministic=True`` a run killed
and resumed from a checkpoint ends with bit-identical weights to a run that never stopped.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import keras
import ml_collections
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from tfsd import config_lib, distribute, models
from tfsd import data as data_lib
from tfsd import layers as sd_layers

# -------------------------------------------------------------------------------------------------
# Command line and config resolution.
# -------------------------------------------------------------------------------------------------

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config: configs/NAME.py by NAME, or a path; ':runlocal' selects the mode."
)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Checkpoints, logs and the resolved config.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (local or gs://).")


class CheckpointError(RuntimeError):
    """A checkpoint or run directory that cannot be resumed; nothing was deleted."""


def available_configs() -> list[str]:
    """Names of the config files shipped in ``configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve_config_path(spec: str) -> str:
    """Maps ``NAME[:ARG]`` or ``PATH[:ARG]`` to ``PATH[:ARG]``; unknown names list close matches."""
    name, sep, arg = spec.partition(":")
    if os.path.isfile(name):
        return spec
    candidate = CONFIG_DIR / f"{name.removesuffix('.py')}.py"
    if "/" not in name and candidate.is_file():
        return f"{candidate}{sep}{arg}"
    close = difflib.get_close_matches(Path(name).stem, available_configs(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Config {name!r} is neither a file nor a config in {CONFIG_DIR}.{hint} "
        f"Available: {', '.join(available_configs())}."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``NAME[:ARG]`` (no command-line overrides), for tests and notebooks."""
    path, _, arg = resolve_config_path(spec).partition(":")
    module = config_flags.config_flags._LoadConfigModule("config", path)  # noqa: SLF001
    return module.get_config(arg) if arg else module.get_config()


def _rewrite_config_argv(argv: list[str]) -> list[str]:
    """Resolves ``--config=NAME`` to the file path before absl parses flags."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config="):
            arg = "--config=" + resolve_config_path(arg.split("=", 1)[1])
        elif arg == "--config" and i + 1 < len(argv):
            out.append(arg)
            i += 1
            arg = resolve_config_path(argv[i])
        out.append(arg)
        i += 1
    return out


# -------------------------------------------------------------------------------------------------
# Run directory: the resolved config is written once and checked on every resume.
# -------------------------------------------------------------------------------------------------


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: list(d) if isinstance(d, tuple) else d}


def check_or_write_config(config: ml_collections.ConfigDict, model_dir: str) -> None:
    """Writes ``model_dir/config.json``, or checks a resumed run's config against it.

    Raises:
      CheckpointError: the saved config differs in a field other than the run-length fields
        (``config_lib.RUN_LENGTH_FIELDS``); the message lists every differing field.
    """
    tf.io.gfile.makedirs(model_dir)
    path = os.path.join(model_dir, "config.json")
    current = json.loads(config.to_json_best_effort())
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        a, b = _flatten(saved), _flatten(current)
        diff = [
            f"  {k}: saved {a.get(k, '<missing>')!r} → now {b.get(k, '<missing>')!r}"
            for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k not in config_lib.RUN_LENGTH_FIELDS
        ]
        if diff:
            raise CheckpointError(
                f"{model_dir} holds a run with a different config; resuming would mix two runs. "
                "Use a new --model_dir, or restore these fields:\n" + "\n".join(diff)
            )
    with tf.io.gfile.GFile(path + ".tmp", "w") as f:
        f.write(json.dumps(current, indent=2, sort_keys=True))
    tf.io.gfile.rename(path + ".tmp", path, overwrite=True)


# -------------------------------------------------------------------------------------------------
# Model, optimizer, learning rate, EMA.
# -------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="tfsd")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup_steps``, then constant / step / exponential
    (staircase, as the EfficientNet reference) / cosine decay over ``total_steps``."""

    def __init__(
        self,
        peak: float,
        warmup_steps: int,
        total_steps: int,
        schedule: str,
        boundaries: tuple[int, ...] = (),
        step_factor: float = 0.1,
        decay_rate: float = 0.97,
        decay_steps: int = 1,
    ):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps
        self.schedule, self.boundaries, self.step_factor = schedule, tuple(boundaries), step_factor
        self.decay_rate, self.decay_steps = decay_rate, max(1, decay_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        if self.schedule == "constant":
            lr = tf.constant(self.peak, tf.float32)
        elif self.schedule == "step":
            passed = tf.add_n([tf.cast(step >= b, tf.float32) for b in self.boundaries] or [0.0])
            lr = self.peak * tf.pow(self.step_factor, passed)
        elif self.schedule == "exponential":
            lr = self.peak * tf.pow(self.decay_rate, tf.floor(step / self.decay_steps))
        else:  # cosine, after warm-up
            span = max(1, self.total_steps - self.warmup_steps)
            frac = tf.clip_by_value((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * self.peak * (1.0 + tf.cos(math.pi * frac))
        if self.warmup_steps > 0:
            lr = tf.minimum(lr, self.peak * step / self.warmup_steps)
        return lr

    def get_config(self):
        return dict(
            peak=self.peak, warmup_steps=self.warmup_steps, total_steps=self.total_steps,
            schedule=self.schedule, boundaries=self.boundaries, step_factor=self.step_factor,
            decay_rate=self.decay_rate, decay_steps=self.decay_steps,
        )  # fmt: skip


def make_lr_schedule(config, steps_per_epoch: int, schedule_steps: int) -> WarmupSchedule:
    lr = config.lr
    peak = lr.base * (config.batch_size / 256 if lr.scale_by_batch else 1.0)
    return WarmupSchedule(
        peak=peak,
        warmup_steps=int(round(lr.warmup_epochs * steps_per_epoch)),
        total_steps=schedule_steps,
        schedule=lr.schedule,
        boundaries=tuple(int(round(b * schedule_steps)) for b in lr.step_boundaries),
        step_factor=lr.step_factor,
        decay_rate=lr.decay_rate,
        decay_steps=int(round(lr.decay_epochs * steps_per_epoch)),
    )


def make_optimizer(config, schedule) -> keras.optimizers.Optimizer:
    o = config.optimizer
    clip = {"global_clipnorm": o.grad_clip_norm} if o.grad_clip_norm > 0 else {}
    if o.name == "sgd":
        opt = keras.optimizers.SGD(schedule, momentum=o.momentum, nesterov=o.nesterov, **clip)
    elif o.name == "rmsprop":
        # Keras adds epsilon outside the square root, the TF1 reference inside; with eps = 1e-3
        # the two differ only where the second moment is below ~1e-6.
        opt = keras.optimizers.RMSprop(
            schedule, rho=o.rho, momentum=o.momentum, epsilon=o.epsilon, **clip
        )
    else:
        # Weight decay for AdamW is the L2 term of the loss like the others, so no double decay.
        opt = keras.optimizers.AdamW(schedule, weight_decay=0.0, epsilon=o.epsilon, **clip)
    if config.precision == "float16":
        opt = keras.optimizers.LossScaleOptimizer(opt)
    return opt


def _is_sd_state(v) -> bool:
    return v.path.rsplit("/", 1)[-1] in ("sd_step", "sd_keep_rate")


class EMA:
    """Exponential moving average of the model's float weights (trainable and BN statistics).

    Decay is ``min(decay, (1 + step) / (10 + step))``, as ``tf.train.ExponentialMovingAverage``
    with ``num_updates`` in the EfficientNet reference. Shadows are created under the strategy
    scope (mirrored) and updated in cross-replica context, so every replica holds the same copy.
    """

    def __init__(self, model: keras.Model, decay: float):
        self.decay = decay
        self.sources = [
            v for v in model.weights if v.dtype.startswith("float") and not _is_sd_state(v)
        ]
        self.shadows = [
            # A numpy copy: keras.Variable(<tf.Variable>) would wrap (alias) the same variable.
            keras.Variable(v.numpy(), trainable=False, name=f"ema_{v.name}", dtype=v.dtype)
            for v in self.sources
        ]

    def update(self, step: tf.Tensor) -> None:
        step = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for s, v in zip(self.shadows, self.sources):
            s.assign(decay * s.value + (1.0 - decay) * tf.cast(v.value, s.dtype))

    def swap(self) -> None:
        """Exchanges model weights and EMA weights (call twice to restore)."""
        for s, v in zip(self.shadows, self.sources):
            tmp = v.numpy()  # a host copy: an eager read may alias the buffer assign() reuses
            v.assign(s.numpy())
            s.assign(tmp)


# -------------------------------------------------------------------------------------------------
# Training state, steps and evaluation.
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """Everything the loop touches, built once under the strategy scope."""

    config: ml_collections.ConfigDict
    strategy: tf.distribute.Strategy
    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    ema: EMA | None
    step: tf.Variable
    num_classes: int
    steps_per_epoch: int
    total_steps: int
    sd_layers: list


def build_model(config, num_classes: int, num_replicas: int = 1) -> keras.Model:
    """The run's model, as ``config.model`` describes it (also used by `tfsd.export`).

    Builds under the current dtype policy and distribution scope; variables (and so
    checkpoints) are float32 whatever the precision.
    """
    size = config.model.image_size
    overrides = config.model.overrides.to_dict()
    if num_replicas > 1 and config.model.sd_mode == "batch":
        # Keras BatchNormalization updates mirrored statistics with cross-replica ops; replicas
        # skipping different blocks would issue different collectives, so gates are synced.
        overrides.setdefault("sync_replicas", True)
    return models.create_model(
        config.model.name,
        num_classes=num_classes,
        input_shape=(size, size, 3),
        survival_prob=config.model.survival_prob,
        sd_mode=config.model.sd_mode,
        sd_scale_at=config.model.sd_scale_at,
        **overrides,
    )


def build_task(config, data_dir: str | None) -> Task:
    config_lib.validate(config)
    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    num_classes = config.model.num_classes or info.num_classes
    steps_per_epoch = info.num_train_examples // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(
            f"batch_size {config.batch_size} exceeds the {info.num_train_examples} training "
            "examples: lower it or use more data."
        )
    schedule_steps = max(1, int(math.ceil(config.num_epochs * steps_per_epoch)))
    total_steps = config.total_steps or schedule_steps

    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    keras.mixed_precision.set_global_policy(policy[config.precision])
    strategy = distribute.get_strategy(config.distribute)
    with strategy.scope():
        model = build_model(config, num_classes, num_replicas=strategy.num_replicas_in_sync)
        optimizer = make_optimizer(
            config, make_lr_schedule(config, steps_per_epoch, schedule_steps)
        )
        optimizer.build(model.trainable_variables)
        ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
    return Task(
        config, strategy, model, optimizer, ema, step, num_classes, steps_per_epoch, total_steps,
        sd_layers.stochastic_depth_layers(model),
    )  # fmt: skip


def _decayed(v) -> bool:
    # Kernels only: BN scale/shift and biases are not decayed (as fb.resnet.torch's practice in
    # timm/Model Garden; the EfficientNet reference also decays biases, a negligible difference).
    return v.name in ("kernel", "depthwise_kernel")


def _per_example_loss(task: Task, labels, logits):
    logits = tf.cast(logits, tf.float32)
    if labels.shape.rank == 1:
        labels = tf.one_hot(labels, task.num_classes)
    return keras.losses.categorical_crossentropy(
        labels, logits, from_logits=True, label_smoothing=task.config.label_smoothing
    )


def _correct(labels, logits, k: int):
    if labels.shape.rank == 2:
        labels = tf.argmax(labels, axis=-1)
    hits = tf.math.in_top_k(tf.cast(labels, tf.int32), tf.cast(logits, tf.float32), k)
    return tf.reduce_sum(tf.cast(hits, tf.float32))


def make_train_loop(task: Task):
    """A ``tf.function`` running ``n`` training steps per host call, returning summed metrics."""
    config, strategy, model, opt = task.config, task.strategy, task.model, task.optimizer
    variables = model.trainable_variables
    decayed = [v for v in variables if _decayed(v)]
    wd = config.optimizer.weight_decay
    float_weights = [v for v in model.weights if v.dtype.startswith("float")]

    def replica_step(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = _per_example_loss(task, labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
            if wd > 0 and decayed:
                l2 = tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(v.value, tf.float32))) for v in decayed]
                )
                loss += 0.5 * wd * l2 / strategy.num_replicas_in_sync
            scaled = opt.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # A block dropped by a batch-mode gate never ran: its variables get zero gradients.
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        opt.apply(grads, variables)
        batch = tf.cast(tf.shape(logits)[0], tf.float32)
        return {
            "loss": loss,
            "top1": _correct(labels, logits, 1),
            "examples": batch,
        }

    step_fn = tf.function(replica_step, jit_compile=True) if config.jit_compile else replica_step

    @tf.function
    def train_loop(iterator, n):
        totals = {"loss": 0.0, "top1": 0.0, "examples": 0.0, "active_blocks": 0.0}
        totals = {k: tf.constant(v) for k, v in totals.items()}
        for _ in tf.range(n):
            images, labels = next(iterator)
            out = strategy.run(step_fn, args=(images, labels))
            out = {k: strategy.reduce("SUM", v, axis=None) for k, v in out.items()}
            task.step.assign_add(1)
            if task.ema is not None:
                task.ema.update(task.step)
            active = tf.add_n(
                [tf.cast(lay.keep_rate.value, tf.float32) for lay in task.sd_layers] or [0.0]
            )
            out["active_blocks"] = active
            totals = {k: totals[k] + out[k] for k in totals}
        # Weights too: BN statistics can overflow a step before the loss shows it.
        totals["finite"] = tf.cast(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(v.value)) for v in float_weights]),
            tf.float32,
        )
        return totals

    return train_loop


def make_eval_fn(task: Task):
    strategy, model = task.strategy, task.model

    def replica_eval(images, labels):
        logits = model(images, training=False)
        return {
            "loss": tf.reduce_sum(_per_example_loss(task, labels, logits)),
            "top1": _correct(labels, logits, 1),
            "top5": _correct(labels, logits, min(5, task.num_classes)),
            "examples": tf.cast(tf.shape(logits)[0], tf.float32),
        }

    @tf.function
    def eval_step(batch):
        out = strategy.run(replica_eval, args=batch)
        return {k: strategy.reduce("SUM", v, axis=None) for k, v in out.items()}

    return eval_step


def evaluate(task: Task, eval_ds, eval_step, max_steps: int = 0) -> dict[str, float]:
    """Top-1 / top-5 / loss over the eval split, with the EMA weights when there are any."""
    if task.ema is not None:
        task.ema.swap()
    try:
        sums: dict[str, float] = {}
        for i, batch in enumerate(eval_ds):
            if max_steps and i >= max_steps:
                break
            for k, v in eval_step(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v)
    finally:
        if task.ema is not None:
            task.ema.swap()
    n = max(sums.get("examples", 0.0), 1.0)
    return {"top1": sums["top1"] / n, "top5": sums["top5"] / n, "loss": sums["loss"] / n,
            "examples": sums["examples"]}  # fmt: skip


# -------------------------------------------------------------------------------------------------
# Checkpoints.
# -------------------------------------------------------------------------------------------------


def make_checkpoint(task: Task, iterator) -> tf.train.Checkpoint:
    items = dict(model=task.model, optimizer=task.optimizer, step=task.step)
    if isinstance(iterator, tf.__internal__.tracking.Trackable):
        items["iterator"] = iterator  # exact data position on resume
    else:
        logging.warning(
            "%s cannot checkpoint its input iterator: a resumed run restarts the data stream "
            "(model, optimizer and stochastic-depth state are still restored exactly).",
            type(task.strategy).__name__,
        )
    if task.ema is not None:
        items["ema"] = task.ema.shadows
    return tf.train.Checkpoint(**items)


def restore_latest(manager: tf.train.CheckpointManager, checkpoint) -> int | None:
    """Restores the newest checkpoint; raises CheckpointError (deleting nothing) if it fails."""
    path = manager.latest_checkpoint
    if path is None:
        return None
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except Exception as e:  # noqa: BLE001  (TF raises OpError, IndexError, ValueError, ...)
        raise CheckpointError(
            f"Cannot resume from {path}: it is corrupt or belongs to a different model "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300]}). Nothing was deleted or "
            "overwritten; point --model_dir at a new directory or move this one aside."
        ) from e
    return int(checkpoint.step.numpy()) if hasattr(checkpoint, "step") else None


# -------------------------------------------------------------------------------------------------
# The loop.
# -------------------------------------------------------------------------------------------------


class _Progress:
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


def train_and_evaluate(config: ml_collections.ConfigDict, model_dir: str,
                       data_dir: str | None = None) -> dict[str, float]:  # fmt: skip
    """Trains ``config`` in ``model_dir`` (resuming from its latest checkpoint) and evaluates.

    Returns:
      The final eval metrics (``top1``, ``top5``, ``loss``, ``examples``) plus ``step``.
    """
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(config.seed)
    config_lib.validate(config)
    check_or_write_config(config, model_dir)
    task = build_task(config, data_dir)
    strategy, batch = task.strategy, config.batch_size
    size = config.model.image_size

    def distributed(split: str):
        return strategy.distribute_datasets_from_function(
            lambda ctx: data_lib.build_dataset(
                config.data,
                split=split,
                global_batch_size=batch,
                image_size=size,
                seed=config.seed,
                data_dir=data_dir,
                input_context=ctx,
            )
        )

    train_ds, eval_ds = distributed("train"), distributed("eval")
    iterator = iter(train_ds)
    checkpoint = make_checkpoint(task, iterator)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, "checkpoints"), max_to_keep=config.keep_checkpoints
    )
    start = restore_latest(manager, checkpoint)
    if start is not None:
        logging.info("Resumed from %s at step %d.", manager.latest_checkpoint, start)
    step = int(task.step.numpy())

    train_loop, eval_step = make_train_loop(task), make_eval_fn(task)
    writers = {
        k: tf.summary.create_file_writer(os.path.join(model_dir, k)) for k in ("train", "eval")
    }
    stop_signal: list[int] = []
    previous = {
        s: signal.signal(s, lambda signum, _: stop_signal.append(signum))
        for s in (signal.SIGTERM, signal.SIGINT)
    }
    progress = _Progress(task.total_steps, step)
    every = config.checkpoint_every_steps
    eval_every = config.eval_every_steps
    last_saved = step
    try:
        while step < task.total_steps and not stop_signal:
            # Host loops end exactly on checkpoint and eval boundaries.
            n = min(config.steps_per_loop, task.total_steps - step, every - step % every)
            if eval_every:
                n = min(n, eval_every - step % eval_every)
            t0 = time.time()
            sums = {k: float(v) for k, v in train_loop(iterator, tf.constant(n)).items()}
            seconds = time.time() - t0
            if not math.isfinite(sums["loss"]) or sums["finite"] != 1.0:
                raise FloatingPointError(
                    f"Training loss or weights became non-finite (loss {sums['loss']}) between "
                    f"steps {step} and {step + n}. "
                    f"Stopped without saving; the last good checkpoint is "
                    f"{manager.latest_checkpoint or '(none)'}. Lower lr.base, check the data, "
                    "or use precision=float32."
                )
            step = int(task.step.numpy())
            metrics = {
                "loss": sums["loss"] / n,
                "top1": sums["top1"] / max(sums["examples"], 1.0),
                "lr": float(task.optimizer.learning_rate),
                "images_per_sec": sums["examples"] / max(seconds, 1e-9),
                "active_blocks": sums["active_blocks"] / n,
            }
            with writers["train"].as_default(step=step):
                for k, v in metrics.items():
                    tf.summary.scalar(k, v)
                tf.summary.scalar("stochastic_blocks", len(task.sd_layers))
            progress.update(step, metrics)
            if step % every == 0 or step >= task.total_steps:
                manager.save(checkpoint_number=step)
                last_saved = step
            if eval_every and step % eval_every == 0 and step < task.total_steps:
                _log_eval(
                    task, evaluate(task, eval_ds, eval_step, config.eval_steps), writers, step
                )
        if stop_signal:
            if last_saved != step:
                manager.save(checkpoint_number=step)
            logging.warning(
                "Signal %d: checkpoint saved at step %d; exiting.", stop_signal[0], step
            )
            sys.exit(128 + stop_signal[0])
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    result = evaluate(task, eval_ds, eval_step, config.eval_steps)
    _log_eval(task, result, writers, step)
    result["step"] = step
    return result


def _log_eval(task: Task, result: dict[str, float], writers, step: int) -> None:
    with writers["eval"].as_default(step=step):
        for k in ("top1", "top5", "loss"):
            tf.summary.scalar(k, result[k])
    logging.info(
        "eval at step %d: top1=%.4f top5=%.4f loss=%.4f (%d examples)",
        step, result["top1"], result["top5"], result["loss"], int(result["examples"]),
    )  # fmt: skip


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _CONFIG.value is None or not _MODEL_DIR.value:
        raise app.UsageError("--config and --model_dir are required.")
    result = train_and_evaluate(_CONFIG.value, _MODEL_DIR.value, _DATA_DIR.value)
    print(json.dumps({"final_eval": result}))


def run_main() -> None:
    """Entry point of ``python -m tfsd.train`` and the ``tfsd-train`` console script."""
    try:
        argv = _rewrite_config_argv(sys.argv)
    except ValueError as e:
        sys.exit(f"tfsd.train: {e}")
    app.run(main, argv=argv)


if __name__ == "__main__":
    run_main()
