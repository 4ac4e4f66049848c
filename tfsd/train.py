"""Train and evaluate a tfsd model: ``python -m tfsd.train --config=NAME[:ARG] --model_dir=DIR``.

One readable file, top to bottom: command line and config resolution → run directory and config
check → model, optimizer, EMA → data → the distributed training step → evaluation →
checkpoints and resume → the loop. Configs are ``configs/NAME.py`` files (``get_config(arg)``
returning an ``ml_collections.ConfigDict``, as in big_vision); overrides come from the command
line as ``--config.lr.base=0.05``, and an unknown key fails at once with a close match.

Exact resume: the train data stream is a pure function of (seed, step) and every other random
state is in the checkpoint (the stochastic-depth step counters, Keras ``SeedGenerator`` states of
dropout layers, the optimizer, the EMA), so with ``--config.deterministic=True`` a run killed and
resumed from a checkpoint ends with bit-identical weights to a run that never stopped, under every
strategy, without saving iterator state.

Distribution (see ``tfsd.distribute`` and the README): the global batch is split over replicas;
gradients are all-reduced by this loop (not by the optimizer) so that clipping sees the global
norm; BatchNorm moving statistics, which Keras 3 keeps per replica (aggregation "none",
``keras/src/layers/normalization/batch_normalization.py``), are averaged across replicas after
every step, so EMA, eval and checkpoints describe the whole batch.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import keras
import ml_collections
import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from ml_collections import config_flags

from tfsd import config_lib, distribute, models
from tfsd import data as data_lib
from tfsd import layers as sd_layers

# -------------------------------------------------------------------------------------------------
# Command line and config resolution.
# -------------------------------------------------------------------------------------------------


def _config_dir() -> Path:
    """Where ``--config=NAME`` looks: the installed ``tfsd.configs`` package, else the source tree.

    setup.py ships the top-level ``configs/`` as the package ``tfsd.configs`` (``package_dir``),
    so after ``pip install`` of a wheel they sit next to this module. In a source checkout (on
    ``PYTHONPATH`` or installed editable, where this file stays in the checkout) they sit beside
    the ``tfsd/`` directory. Any other layout: ask the import system.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "__init__.py").is_file():
            return candidate
    spec = importlib.util.find_spec("tfsd.configs")
    if spec is not None and spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0]).resolve()
    raise ImportError("tfsd's configs are missing: neither tfsd/configs nor a source configs/.")


CONFIG_DIR = _config_dir()

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config: configs/NAME.py by NAME (or a family variant, efficientnet_b3 → "
    "configs/efficientnet.py:b3), or a path; ':runlocal' selects the mode.",
)
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Checkpoints, logs and the resolved config.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory (local or gs://).")


class CheckpointError(RuntimeError):
    """A checkpoint or run directory that cannot be resumed; nothing was deleted."""


def _config_module(path: Path) -> Any:
    """Executes the config file at ``path`` as a fresh module, registered nowhere.

    Not absl's loader (``config_flags._LoadConfigModule``): it reuses one module object named
    "config" for every file (``SourceFileLoader.load_module``), so a module attribute such as
    ``VARIANTS`` of one file would still be there after loading the next.
    """
    spec = importlib.util.spec_from_file_location(f"tfsd_config_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"Cannot load config file {path}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family_variants(family: str) -> tuple[str, ...]:
    """The ``VARIANTS`` of the family config ``configs/FAMILY.py``; () if it is not a family.

    A family file (``configs/efficientnet.py``) serves every name ``FAMILY_VARIANT``
    (``efficientnet_b3``) through its argument (``efficientnet:b3``): see `resolve_config_path`.
    """
    path = CONFIG_DIR / f"{family}.py"
    if not family or "/" in family or not path.is_file():
        return ()
    return tuple(getattr(_config_module(path), "VARIANTS", ()))


def available_configs() -> list[str]:
    """Every ``--config=NAME`` that resolves: config files, and ``FAMILY_VARIANT`` of families.

    A family file's own name is not listed: it needs its variant as the argument.
    """
    names = []
    for path in CONFIG_DIR.glob("*.py"):
        if path.stem.startswith("_"):
            continue
        variants = family_variants(path.stem)
        names += [f"{path.stem}_{v}" for v in variants] if variants else [path.stem]
    return sorted(names)


def resolve_config_path(spec: str) -> str:
    """Maps ``NAME[:ARG]`` or ``PATH[:ARG]`` to ``PATH[:ARG]``; unknown names list close matches.

    ``NAME`` is a file ``configs/NAME.py`` or a family variant ``FAMILY_VARIANT``, which maps to
    ``configs/FAMILY.py:VARIANT[,ARG]`` (``efficientnet_b3:runlocal`` →
    ``configs/efficientnet.py:b3,runlocal``).
    """
    name, sep, arg = spec.partition(":")
    if os.path.isfile(name):
        return spec
    stem = name.removesuffix(".py")
    candidate = CONFIG_DIR / f"{stem}.py"
    if "/" not in name and candidate.is_file():
        return f"{candidate}{sep}{arg}"
    family, _, variant = stem.rpartition("_")
    variants = family_variants(family) if "/" not in name else ()
    if variant in variants:
        return f"{CONFIG_DIR / family}.py:{variant}" + (f",{arg}" if arg else "")
    if variants:
        raise ValueError(
            f"Config {name!r}: {family} has no variant {variant!r}. Valid: "
            f"{', '.join(f'{family}_{v}' for v in variants)}."
        )
    close = difflib.get_close_matches(Path(name).stem, available_configs(), n=3, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(
        f"Config {name!r} is neither a file nor a config in {CONFIG_DIR}.{hint} "
        f"Available: {', '.join(available_configs())}."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """Loads ``NAME[:ARG]`` (no command-line overrides), for tests and notebooks."""
    path, _, arg = resolve_config_path(spec).partition(":")
    module = _config_module(Path(path))
    return module.get_config(arg) if arg else module.get_config()


def rewrite_config_argv(argv: list[str]) -> list[str]:
    """Resolves ``--config=NAME`` to the file path before absl parses flags."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config.init.from="):
            # ml_collections parses override paths as Python ("from" is a keyword): the field
            # is init.source, and --config.init.from is its spelling on the command line.
            arg = "--config.init.source=" + arg.split("=", 1)[1]
        elif arg.startswith("--config="):
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


def check_or_write_config(
    config: ml_collections.ConfigDict, model_dir: str, write: bool = True
) -> None:
    """Writes ``model_dir/config.json``, or checks a resumed run's config against it.

    ``write=False`` (non-chief workers) only checks an existing file and creates nothing.

    Raises:
      CheckpointError: the saved config differs in a field other than the run-length fields
        (``config_lib.RUN_LENGTH_FIELDS``); the message lists every differing field.
    """
    path = os.path.join(model_dir, "config.json")
    if write:
        tf.io.gfile.makedirs(model_dir)
    current = json.loads(config.to_json_best_effort())
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        a = {**config_lib.NEW_FIELD_DEFAULTS, **_flatten(saved)}
        b = _flatten(current)
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
    if not write:
        return
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


def _loop_reduced(cls: type) -> type:
    """``cls`` with its gradient all-reduce removed: the training loop all-reduces gradients.

    Keras 3 clips (``global_clipnorm``) in ``BaseOptimizer._backend_apply_gradients`` *before*
    the TF backend's ``_all_reduce_sum_gradients`` (``keras/src/optimizers/base_optimizer.py``,
    ``keras/src/backend/tensorflow/optimizer.py``), so under any strategy it clipped each
    replica's partial gradient by its own norm. The loop instead all-reduces, then clips by the
    global norm, then applies with this class, which must not sum the gradients again.
    """

    class LoopReduced(cls):
        def _all_reduce_sum_gradients(self, grads_and_vars):
            return list(grads_and_vars)

    LoopReduced.__name__ = LoopReduced.__qualname__ = cls.__name__
    return LoopReduced


_SGD = _loop_reduced(keras.optimizers.SGD)
_RMSPROP = _loop_reduced(keras.optimizers.RMSprop)
_ADAMW = _loop_reduced(keras.optimizers.AdamW)


def make_optimizer(config, schedule, variables=None) -> keras.optimizers.Optimizer:
    """The optimizer of ``config.optimizer``; gradients reach it already all-reduced and clipped.

    ``adamw`` is decoupled AdamW (Loshchilov & Hutter 2019; ``keras/src/optimizers/adamw.py``:
    ``w -= lr * weight_decay * w`` before the Adam step) on kernels only, with no L2 term in the
    loss; ``sgd`` and ``rmsprop`` get ``0.5 * weight_decay * Σ w²`` in the loss (the references').
    ``variables``: the trainable variables, to exclude non-kernels from AdamW's decay.
    """
    o = config.optimizer
    if o.name == "sgd":
        opt = _SGD(schedule, momentum=o.momentum, nesterov=o.nesterov)
    elif o.name == "rmsprop":
        # Keras adds epsilon outside the square root, the TF1 reference inside; with eps = 1e-3
        # the two differ only where the second moment is below ~1e-6.
        opt = _RMSPROP(schedule, rho=o.rho, momentum=o.momentum, epsilon=o.epsilon)
    else:
        opt = _ADAMW(schedule, weight_decay=o.weight_decay, epsilon=o.epsilon)
        if variables is not None:
            opt.exclude_from_weight_decay(var_list=[v for v in variables if not _decayed(v)])
        else:
            opt.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
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
# Fine-tuning: initial weights from pretrained files or another run.
# -------------------------------------------------------------------------------------------------


def init_skip_layers(config) -> list[str]:
    """The layer names of ``config.init.skip`` (comma-separated)."""
    return [n.strip() for n in str(config.init.skip).split(",") if n.strip()]


def copy_weights_by_path(source: keras.Model, model: keras.Model, skip=()) -> list[str]:
    """Copies every weight of ``model`` from the ``source`` weight with the same path.

    Both are tfsd models (a run's, a ``.keras`` file's): weight paths (``layer/variable``) are
    unique and identical for the same architecture. Layers in ``skip`` keep their values.

    Returns:
      The names of the layers that received weights.

    Raises:
      ValueError: a weight missing from ``source`` or of another shape (the message names it).
    """
    by_path = {v.path: v for v in source.weights}
    copied, problems = set(), []
    for v in model.weights:
        layer = v.path.split("/", 1)[0]
        if layer in skip:
            continue
        src = by_path.get(v.path)
        if src is None:
            problems.append(f"{v.path}: not in the source")
        elif tuple(src.shape) != tuple(v.shape):
            problems.append(f"{v.path}: source {tuple(src.shape)}, model {tuple(v.shape)}")
        else:
            v.assign(src.numpy())
            copied.add(layer)
    if problems:
        raise ValueError(
            "init.from does not fit the model (add differing layers, e.g. the head "
            "'predictions', to --config.init.skip):\n  " + "\n  ".join(problems[:10])
        )
    return sorted(copied)


def initialize_from(config, model: keras.Model, data_dir: str | None = None) -> list[str]:
    """Loads ``config.init.from`` into ``model`` (a fresh run's), skipping ``config.init.skip``.

    Dispatch on the path: a directory or a checkpoint prefix (``PREFIX.index`` exists) is a
    tfsd run (`tfsd.export.restore_run`, EMA weights when kept, copied by weight path);
    ``.safetensors`` a torchvision/timm ResNet (`tfsd.models.load_torch_resnet_weights`);
    ``.h5`` / ``.weights.h5`` keras.applications EfficientNet weights
    (`tfsd.models.load_keras_applications_weights`); ``.keras`` a saved model, a tfsd one
    copied by weight path, any other (keras.applications) through that importer.

    Returns:
      The names of the layers that received weights.
    """
    path = os.path.expanduser(str(config.init.source))
    skip = init_skip_layers(config)
    if tf.io.gfile.isdir(path) or tf.io.gfile.exists(path + ".index"):
        from tfsd import export  # noqa: PLC0415  (export imports this module)

        run_dir, checkpoint = path, None
        if not tf.io.gfile.isdir(path):  # RUN/checkpoints/ckpt-N
            run_dir, checkpoint = os.path.dirname(os.path.dirname(path)), path
        source, *_ = export.restore_run(run_dir, checkpoint=checkpoint, data_dir=data_dir)
        return copy_weights_by_path(source, model, skip)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"init.from: {path} does not exist.")
    if path.endswith(".safetensors"):
        return models.load_torch_resnet_weights(model, path, skip_layers=skip)
    if path.endswith(".h5"):
        return models.load_keras_applications_weights(model, path, skip_layers=skip)
    if path.endswith(".keras"):
        source = keras.saving.load_model(path, compile=False)
        layers = source._flatten_layers(include_self=False)  # noqa: SLF001
        if any(type(lay).__module__.startswith("tfsd.") for lay in layers):
            return copy_weights_by_path(source, model, skip)
        return models.load_keras_applications_weights(model, source, skip_layers=skip)
    raise ValueError(
        f"init.from: {path} is not a run directory, a checkpoint prefix, a .h5 / .weights.h5, "
        ".keras or .safetensors file."
    )


def trainable_while_frozen(config, model: keras.Model) -> list[bool]:
    """Per trainable variable: whether it trains during ``init.freeze_steps`` (the head)."""
    head = set(init_skip_layers(config)) or {"predictions"}
    flags_ = [v.path.split("/", 1)[0] in head for v in model.trainable_variables]
    if config.init.freeze_steps and not any(flags_):
        raise ValueError(
            f"init.freeze_steps: no trainable layer named {sorted(head)} in {model.name}; "
            "name the head in --config.init.skip."
        )
    return flags_


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


def use_sync_bn(config, num_replicas: int) -> bool:
    """Whether the run's BatchNorm is synchronized across replicas (``config.model.sync_bn``).

    ``auto``: on for EfficientNet with several replicas (the TPU recipe normalises over the
    global batch), off for the ResNets (fb.resnet.torch and the paper's CIFAR runs normalise
    per GPU) and always off with one replica, where it changes nothing.
    """
    mode = config.model.sync_bn
    if mode == "auto":
        return num_replicas > 1 and config.model.name.startswith("efficientnet")
    return mode == "on"


def build_model(config, num_classes: int, num_replicas: int = 1) -> keras.Model:
    """The run's model, as ``config.model`` describes it (also used by `tfsd.export`).

    ``config.seed`` seeds the stochastic-depth gates and dropout (the builders' ``seed=``;
    ``model.overrides.seed`` wins if set). Gates are drawn per replica, except with synchronized
    BatchNorm in batch mode, where replicas draw the same gates (``sync_replicas``) so that all
    of them run the same collectives. Builds under the current dtype policy and distribution
    scope; variables (and so checkpoints) are float32 whatever the precision.
    """
    size = config.model.image_size
    overrides = config.model.overrides.to_dict()
    overrides.setdefault("seed", config.seed)
    if use_sync_bn(config, num_replicas):
        overrides.setdefault("sync_bn", True)
    if overrides.get("sync_bn") and config.model.sd_mode == "batch":
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


def check_num_classes(config, dataset_classes: int) -> int:
    """The head size: ``config.model.num_classes`` or the dataset's, never fewer than its labels.

    A head smaller than the label range made ``tf.one_hot`` return all-zero rows for the larger
    labels: those examples trained towards no class at all, silently.
    """
    wanted = config.model.num_classes
    if wanted and wanted < dataset_classes:
        raise ValueError(
            f"model.num_classes={wanted} is smaller than the dataset's {dataset_classes} classes "
            f"({config.data.name}): labels >= {wanted} would have no logit. Use 0 (the "
            "dataset's count) or a value >= it."
        )
    return wanted or dataset_classes


def build_task(config, data_dir: str | None, strategy=None) -> Task:
    """Model, optimizer, EMA and step under ``strategy`` (built from the config when None)."""
    config_lib.validate(config)
    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    num_classes = check_num_classes(config, info.num_classes)
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
    strategy = strategy or distribute.get_strategy(config.distribute)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(
            f"batch_size {config.batch_size} (global) must be a multiple of the "
            f"{replicas} replicas."
        )
    if (
        config.jit_compile
        and use_sync_bn(config, replicas)
        and replicas > 1
        and not isinstance(strategy, tf.distribute.TPUStrategy)
        and tf.config.list_logical_devices("GPU") == []
    ):
        raise ValueError(
            "jit_compile=True with synchronized BatchNorm over several CPU replicas is not "
            "supported: MirroredStrategy's CPU all-reduce is a merge_call, which cannot run "
            "inside an XLA function. Set model.sync_bn=off or jit_compile=False."
        )
    with strategy.scope():
        model = build_model(config, num_classes, num_replicas=replicas)
        optimizer = make_optimizer(
            config,
            make_lr_schedule(config, steps_per_epoch, schedule_steps),
            model.trainable_variables,
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


def bn_moving_stats(model: keras.Model) -> list:
    """Moving mean/variance of every unsynchronized BatchNorm layer (they differ per replica)."""
    return [
        v
        for lay in model._flatten_layers(include_self=False)  # noqa: SLF001
        if isinstance(lay, keras.layers.BatchNormalization) and not lay.synchronized
        for v in (lay.moving_mean, lay.moving_variance)
    ]


def make_train_loop(task: Task, stop: tf.Variable | None = None):
    """A ``tf.function`` running up to ``n`` training steps per host call, returning sums.

    ``stop``: a host boolean variable (set by the signal watcher); the loop reads it before every
    step and ends early when it is set, on every worker at the same step (the flag is
    all-reduced when the run spans several hosts). The returned dict holds ``steps`` (done) and
    ``stopped``.
    """
    config, strategy, model, opt = task.config, task.strategy, task.model, task.optimizer
    variables = model.trainable_variables
    decayed = [v for v in variables if _decayed(v)]
    # AdamW decays in the optimizer (decoupled); SGD and RMSProp through the loss.
    wd = 0.0 if config.optimizer.name == "adamw" else config.optimizer.weight_decay
    clip = config.optimizer.grad_clip_norm
    replicas = strategy.num_replicas_in_sync
    float_weights = [v for v in model.weights if v.dtype.startswith("float")]
    stats = bn_moving_stats(model) if replicas > 1 else []
    multi_worker = distribute.is_multi_worker(strategy)
    # Frozen-backbone warm-up (init.freeze_steps): backbone gradients are zeroed, so SGD and
    # RMSProp leave those weights unchanged (their slots stay zero); BatchNorm statistics still
    # follow the new data and AdamW's decoupled decay still applies.
    freeze = int(config.init.freeze_steps)
    head = trainable_while_frozen(config, model) if freeze else []

    def gradients(images, labels):
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            per_example = _per_example_loss(task, labels, logits)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
            if wd > 0 and decayed:
                l2 = tf.add_n(
                    [tf.reduce_sum(tf.square(tf.cast(v.value, tf.float32))) for v in decayed]
                )
                loss += 0.5 * wd * l2 / replicas
            scaled = opt.scale_loss(loss)
        grads = tape.gradient(scaled, variables)
        # A block dropped by a batch-mode gate never ran: its variables get zero gradients.
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        metrics = {
            "loss": loss,
            "top1": _correct(labels, logits, 1),
            "examples": tf.cast(tf.shape(logits)[0], tf.float32),
        }
        return grads, metrics

    if config.jit_compile:
        # XLA compiles the forward and backward pass; the collectives and the optimizer update
        # stay outside (under MirroredStrategy they are merge_calls, which XLA cannot hold).
        gradients = tf.function(gradients, jit_compile=True)

    def replica_step(images, labels):
        grads, metrics = gradients(images, labels)
        ctx = tf.distribute.get_replica_context()
        grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
        if freeze:
            frozen = task.step < freeze  # the step about to run is task.step + 1
            grads = [g if h else tf.where(frozen, tf.zeros_like(g), g) for g, h in zip(grads, head)]
        if clip > 0:
            limit = clip
            if isinstance(opt, keras.optimizers.LossScaleOptimizer):
                # The gradients still carry the loss scale: scale the threshold alike.
                limit = clip * tf.cast(opt.dynamic_scale, tf.float32)
            grads, _ = tf.clip_by_global_norm(grads, limit)
        opt.apply(grads, variables)
        if stats:
            # Each replica updated its own moving statistics from its own examples; averaging
            # them makes the statistics those of the global batch (exactly, for the mean).
            local = [tf.identity(v.value) for v in stats]  # tensors: the local copies
            means = ctx.all_reduce(tf.distribute.ReduceOp.MEAN, local)
            for v, m in zip(stats, means):
                v.assign(m)
        return metrics

    def stop_requested():
        if stop is None:
            return tf.constant(False)
        flag = tf.cast(stop.read_value(), tf.int32)
        if multi_worker:
            # Every worker must stop at the same step or the others hang in a collective.
            # (ReduceOp has SUM and MEAN only: any worker's flag makes the sum positive.)
            flag = strategy.reduce(
                tf.distribute.ReduceOp.SUM, strategy.run(lambda: tf.identity(flag)), axis=None
            )
        return flag > 0

    @tf.function
    def train_loop(iterator, n):
        totals = {"loss": 0.0, "top1": 0.0, "examples": 0.0, "active_blocks": 0.0}
        totals = {k: tf.constant(v) for k, v in totals.items()}
        totals["keep_rates"] = tf.zeros([len(task.sd_layers)])  # per block, summed over steps
        steps, stopped = tf.constant(0.0), tf.constant(False)
        for _ in tf.range(n):
            if stop_requested():
                stopped = tf.constant(True)
                break
            images, labels = next(iterator)
            out = strategy.run(replica_step, args=(images, labels))
            out = {k: strategy.reduce("SUM", v, axis=None) for k, v in out.items()}
            task.step.assign_add(1)
            if task.ema is not None:
                task.ema.update(task.step)
            # keep_rate is sync-on-read with MEAN aggregation (tfsd/layers.py): read here, in the
            # cross-replica context, it is the mean over replicas of each replica's kept
            # fraction, i.e. the global fraction (replicas hold equal batch shares).
            rates = [tf.cast(lay.keep_rate.value, tf.float32) for lay in task.sd_layers]
            out["keep_rates"] = tf.stack(rates) if rates else tf.zeros([0])
            out["active_blocks"] = tf.reduce_sum(out["keep_rates"])
            totals = {k: totals[k] + out[k] for k in totals}
            steps += 1.0
        totals["steps"] = steps
        totals["stopped"] = tf.cast(stopped, tf.float32)
        # Weights too: BN statistics can overflow a step before the loss shows it.
        totals["finite"] = tf.cast(
            tf.reduce_all([tf.reduce_all(tf.math.is_finite(v.value)) for v in float_weights]),
            tf.float32,
        )
        return totals

    return train_loop


def make_eval_fn(task: Task):
    """``eval_step(batch)``: one distributed eval step (a ``tf.function``) returning sums.

    ``eval_step.loop(iterator, n)`` runs ``n`` steps in one ``tf.function`` (TPU needs the
    loop on device; multi-worker runs need every worker to run the same number of steps).
    """
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

    @tf.function
    def eval_loop(iterator, n):
        totals = {k: tf.constant(0.0) for k in ("loss", "top1", "top5", "examples")}
        for _ in tf.range(n):
            out = strategy.run(replica_eval, args=next(iterator))
            out = {k: strategy.reduce("SUM", v, axis=None) for k, v in out.items()}
            totals = {k: totals[k] + out[k] for k in totals}
        return totals

    eval_step.loop = eval_loop
    return eval_step


def fixed_eval_steps(task: Task, num_eval_examples: int) -> int:
    """Eval steps that every worker can run with full batches (0: iterate the split instead).

    Multi-worker and TPU runs evaluate ``floor(N / P) // (B / P)`` full global batches (P input
    pipelines, B the global batch): the same count on every worker, static shapes. Fewer than B
    examples are left out; the logged ``examples`` says how many were used.
    """
    strategy = task.strategy
    if not (
        distribute.is_multi_worker(strategy) or isinstance(strategy, tf.distribute.TPUStrategy)
    ):
        return 0
    # One input pipeline per worker (TPUStrategy: per host).
    pipelines = max(1, getattr(strategy.extended, "_num_workers", 1))
    steps = (num_eval_examples // pipelines) // (task.config.batch_size // pipelines)
    if task.config.eval_steps:
        steps = min(steps, task.config.eval_steps)
    if steps < 1:
        raise ValueError(
            f"The eval split ({num_eval_examples} examples) holds no full global batch of "
            f"{task.config.batch_size}: lower batch_size or use more eval data."
        )
    return steps


def evaluate(task: Task, eval_ds, eval_step, max_steps: int = 0, fixed_steps: int = 0):
    """Top-1 / top-5 / loss over the eval split, with the EMA weights when there are any.

    ``fixed_steps`` > 0 runs exactly that many steps in one ``tf.function`` (see
    `fixed_eval_steps`); otherwise iterates the split (up to ``max_steps`` batches).
    """
    if task.ema is not None:
        task.ema.swap()
    try:
        sums: dict[str, float] = {}
        if fixed_steps:
            out = eval_step.loop(iter(eval_ds), tf.constant(fixed_steps))
            sums = {k: float(v) for k, v in out.items()}
        else:
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


def seed_generator_states(model: keras.Model) -> list:
    """State variables of the Keras ``SeedGenerator``s of ``model`` (e.g. Dropout's).

    They are not model weights, so ``tf.train.Checkpoint(model=...)`` does not save them
    (``keras/src/random/seed_generator.py``: the state is a plain variable of the generator):
    without them a resumed run would replay the dropout masks of the run's first steps.
    """
    return [
        sg.state
        for lay in model._flatten_layers(include_self=True)  # noqa: SLF001
        for sg in getattr(lay, "_seed_generators", [])
    ]


def make_checkpoint(task: Task, iterator=None) -> tf.train.Checkpoint:
    """Checkpoint items: ``model``, ``optimizer``, ``step``, ``rng`` and ``ema`` (when on).

    No iterator: the train stream is rebuilt at the restored step (``build_dataset(start_step=)``).
    ``iterator`` is accepted for compatibility and ignored.
    """
    del iterator
    items = dict(model=task.model, optimizer=task.optimizer, step=task.step)
    rng = seed_generator_states(task.model)
    if rng:
        items["rng"] = rng
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


class _Saver:
    """Saves on every worker; only the chief's files are kept (Model Garden's practice).

    Saving reads sync-on-read variables with collectives, so every worker must save at the same
    step; non-chief workers write to a temporary directory and delete it at once.
    """

    def __init__(self, task: Task, checkpoint, model_dir: str):
        self.checkpoint = checkpoint
        self.chief = distribute.is_chief(task.strategy)
        self.manager = tf.train.CheckpointManager(
            checkpoint,
            os.path.join(model_dir, "checkpoints"),
            max_to_keep=task.config.keep_checkpoints,
        )
        self.strategy = task.strategy

    def save(self, step: int) -> None:
        if self.chief:
            self.manager.save(checkpoint_number=step)
            return
        tmp = distribute.worker_checkpoint_dir(self.strategy, "")
        try:
            self.checkpoint.write(os.path.join(tmp, f"ckpt-{step}"))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


class _StopOnSignal:
    """SIGTERM / SIGINT set ``flag``, which the running train loop reads before every step.

    A Python signal handler runs only when the main thread returns to the interpreter, i.e.
    after the whole host loop (``steps_per_loop`` steps, minutes on a TPU). The C-level handler
    however writes the signal number to the wake-up fd at once (``signal.set_wakeup_fd``); a
    watcher thread reads it and sets the variable, so the loop stops within one step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, flag: tf.Variable):
        self.flag, self.received = flag, []
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        self._thread = threading.Thread(target=self._watch, name="tfsd-signals", daemon=True)
        self._thread.start()

    def _handle(self, signum, _frame):  # the Python-level handler: records, never raises
        if signum not in self.received:
            self.received.append(signum)

    def _watch(self) -> None:
        while True:
            data = os.read(self._read, 64)
            if not data:
                return
            signums = [b for b in data if b in self.SIGNALS]
            if signums:
                self.received.extend(s for s in signums if s not in self.received)
                self.flag.assign(True)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        os.close(self._write)  # ends the watcher's read
        self._thread.join(timeout=5)
        os.close(self._read)


def weights_digest(model: keras.Model) -> str:
    """SHA-256 of the model's weights (replica 0's copy), to compare workers' final states."""
    h = hashlib.sha256()
    for v in model.weights:
        h.update(v.path.encode())
        h.update(np.ascontiguousarray(v.numpy()).tobytes())
    return h.hexdigest()


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
    check_or_write_config(config, model_dir, write=chief)
    task = build_task(config, data_dir, strategy)
    batch, size = config.batch_size, config.model.image_size

    checkpoint = make_checkpoint(task)
    saver = _Saver(task, checkpoint, model_dir)
    start = restore_latest(saver.manager, checkpoint)
    if start is not None:
        logging.info("Resumed from %s at step %d.", saver.manager.latest_checkpoint, start)
    elif config.init.source:
        # A fresh run only: a resumed one continues from its own weights.
        loaded = initialize_from(config, task.model, data_dir)
        if task.ema is not None:  # the average starts from the loaded weights, not random ones
            for shadow, source in zip(task.ema.shadows, task.ema.sources):
                shadow.assign(source.numpy())
        logging.info("Initialized %d layers from %s.", len(loaded), config.init.source)
    step = int(task.step.numpy())

    info = data_lib.get_dataset_info(config.data, data_dir=data_dir)
    fixed_steps = fixed_eval_steps(task, info.num_eval_examples)
    eval_data = config.data
    if fixed_steps:  # full batches only: static shapes, equal step counts on every worker
        eval_data = config.data.copy_and_resolve_references()
        eval_data.eval_drop_remainder = True

    def distributed(split: str, data_config, start_step: int = 0):
        return strategy.distribute_datasets_from_function(
            lambda ctx: data_lib.build_dataset(
                data_config,
                split=split,
                global_batch_size=batch,
                image_size=size,
                seed=config.seed,
                data_dir=data_dir,
                input_context=ctx,
                start_step=start_step,
            )
        )

    # The train stream starts at the restored step: a pure function of (seed, step).
    iterator = iter(distributed("train", config.data, step))
    eval_ds = distributed("eval", eval_data)

    stop = tf.Variable(False, trainable=False, name="stop_requested")
    train_loop, eval_step = make_train_loop(task, stop), make_eval_fn(task)
    if chief:
        writers = {
            k: tf.summary.create_file_writer(os.path.join(model_dir, k)) for k in ("train", "eval")
        }
    else:
        writers = {k: tf.summary.create_noop_writer() for k in ("train", "eval")}
    watcher = _StopOnSignal(stop)
    progress = _Progress(task.total_steps, step)
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
            stopped = sums["stopped"] > 0 or bool(watcher.received)
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
                        _log_keep_rates(task, keep_rates / done, done)
                progress.update(step, metrics)
            if stopped:
                break
            if step % every == 0 or step >= task.total_steps:
                saver.save(step)
                last_saved = step
            if eval_every and step % eval_every == 0 and step < task.total_steps:
                result = evaluate(task, eval_ds, eval_step, config.eval_steps, fixed_steps)
                _log_eval(task, result, writers, step)
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
    result = evaluate(task, eval_ds, eval_step, config.eval_steps, fixed_steps)
    _log_eval(task, result, writers, step)
    for w in writers.values():
        w.flush()
    result["step"] = step
    result["weights_digest"] = weights_digest(task.model)
    return result


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


def _log_keep_rates(task: Task, keep_rates: np.ndarray, steps: int) -> None:
    """Per-block keep rates of the last ``steps`` steps, under the default summary writer.

    ``keep_rate/<block>`` scalars, a ``keep_rates`` histogram over blocks, and a
    ``keep_rate_vs_survival`` image: each block's realised rate against its survival
    probability ``p_l`` with a +-2 standard-error band for this many draws.
    """
    from tfsd import figures  # matplotlib: imported when the first summary is written

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
        argv = rewrite_config_argv(sys.argv)
    except ValueError as e:
        sys.exit(f"tfsd.train: {e}")
    # ml_collections also reads the override flags from sys.argv itself: keep the two equal.
    sys.argv[:] = argv
    app.run(main, argv=argv)


if __name__ == "__main__":
    run_main()
