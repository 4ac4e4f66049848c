"""The model, optimizer, EMA and step of a run, built once under the strategy scope.

`build_model` is also how every other path (restoring a run, exporting it, plotting its schedule)
rebuilds a run's model from its config. See ``docs/training.md``.
"""

from __future__ import annotations

import dataclasses
import math

import keras
import ml_collections
import tensorflow as tf

from tfsd import config_lib, distribute, models
from tfsd import data as data_lib
from tfsd import layers as sd_layers
from tfsd.training import optim


def _is_sd_state(v) -> bool:
    return v.path.rsplit("/", 1)[-1] in ("sd_step", "sd_keep_rate")


class EMA:
    """Exponential moving average of the model's float weights (trainable and BN statistics).

    Decay is ``min(decay, (1 + step) / (10 + step))``, as ``tf.train.ExponentialMovingAverage``
    with ``num_updates`` in the EfficientNet reference. Shadows are created under the strategy
    scope as sync-on-read variables read from the first replica, and updated inside the replica
    step (`update` in replica context): each replica averages its own copy of the weights, which
    are identical after the step, so the copies stay identical with no cross-replica traffic
    (cross-replica updates cost one per variable and step: hundreds for EfficientNet). Reading
    or assigning them outside the step (eval `swap`, checkpoints) acts on every copy.
    """

    def update(self, step: tf.Tensor) -> None:
        step = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + step) / (10.0 + step))
        for s, v in zip(self.shadows, self.sources):
            s.assign(decay * s.value + (1.0 - decay) * tf.cast(v.value, s.dtype))

    def __init__(self, model: keras.Model, decay: float):
        self.model = model
        self.decay = decay
        self.sources = [
            v for v in model.weights if v.dtype.startswith("float") and not _is_sd_state(v)
        ]
        self.shadows = [
            # A numpy copy: keras.Variable(<tf.Variable>) would wrap (alias) the same variable.
            keras.Variable(
                v.numpy(),
                trainable=False,
                name=f"ema_{v.name}",
                dtype=v.dtype,
                synchronization="on_read",
                aggregation="only_first_replica",
            )  # fmt: skip
            for v in self.sources
        ]

    def swap(self) -> None:
        """Exchanges model weights and EMA weights (call twice to restore)."""
        for s, v in zip(self.shadows, self.sources):
            tmp = v.numpy()  # a host copy: an eager read may alias the buffer assign() reuses
            v.assign(s.numpy())
            s.assign(tmp)
        models.refresh_normalization(self.model)  # Normalization statistics are EMA sources too


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
    overrides = config_lib.model_overrides(config)  # the set ones
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
        raise config_lib.ConfigError(
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
        raise config_lib.ConfigError(
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
        raise config_lib.ConfigError(
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
        raise config_lib.ConfigError(
            "jit_compile=True with synchronized BatchNorm over several CPU replicas is not "
            "supported: MirroredStrategy's CPU all-reduce is a merge_call, which cannot run "
            "inside an XLA function. Set model.sync_bn=off or jit_compile=False."
        )
    with strategy.scope():
        model = build_model(config, num_classes, num_replicas=replicas)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        optimizer = optim.make_optimizer(
            config,
            optim.make_lr_schedule(config, steps_per_epoch, schedule_steps),
            model.trainable_variables,
            step=step,  # the schedule follows the training step (float16 skips: optim.AtStep)
        )
        optimizer.build(model.trainable_variables)
        ema = EMA(model, config.ema_decay) if config.ema_decay > 0 else None
    return Task(
        config, strategy, model, optimizer, ema, step, num_classes, steps_per_epoch, total_steps,
        sd_layers.stochastic_depth_layers(model),
    )  # fmt: skip
