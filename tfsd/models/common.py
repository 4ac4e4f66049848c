"""Pieces shared by the model builders: constants, stochastic-depth settings, normalisation, blocks.

This module is the one home of the dataset statistics (``IMAGENET_MEAN`` …) and of `SDConfig`, the
stochastic-depth settings every builder takes (``sd=``), validated once.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfsd import layers as sd_layers

# Per-channel RGB statistics of images scaled to [0, 1]. The one copy in tfsd: configs and data
# code should import these rather than repeat the numbers.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR statistics as used by the fb.resnet.torch / stochastic-depth Torch code.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)
# Fashion-MNIST (greyscale, decoded to 3 equal channels): the train split's mean and std, the
# values tfsd.data.prepare checks on preparation (measured there: 0.28604, 0.35302).
FASHION_MNIST_MEAN = (0.2860,) * 3
FASHION_MNIST_STD = (0.3530,) * 3


def check_number(
    value: Any, name: str, low: float, high: float = math.inf, closed: bool = True
) -> None:
    """Refuses a builder argument that is not a finite number in ``(low, high]``.

    ``closed=False`` checks ``[low, high)`` instead (a rate such as dropout).
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or not (low < value <= high if closed else low <= value < high):
        bounds = f"({low}, {high}]" if closed else f"[{low}, {high})"
        raise ValueError(f"{name} must be a number in {bounds}, got {value!r}.")


def normalize_pixels(
    x: keras.KerasTensor, mean: Sequence[float], std: Sequence[float]
) -> keras.KerasTensor:
    """``(x / 255 - mean) / std`` per channel, for images with values in [0, 255].

    Uses keras.applications' layer pair (``rescaling`` + ``normalization``) with the statistics
    held as the Normalization layer's non-trainable weights, so keras.applications weights port by
    name and exported models need no client-side preprocessing.
    """
    if len(mean) != x.shape[-1] or len(std) != x.shape[-1]:
        raise ValueError(f"mean {mean} and std {std} need one value per channel of {x.shape}.")
    if min(std) <= 0:
        raise ValueError(f"std must be positive, got {std}.")
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
    norm = keras.layers.Normalization(axis=-1, name="normalization")
    x = norm(x)
    norm.adapt_mean.assign(np.asarray(mean, "float32"))
    norm.adapt_variance.assign(np.square(np.asarray(std, "float32")))
    norm.finalize_state()
    return x


# Keras' local pooling layers (average and max, 1-3D): single-input, no weights, scale-equivariant
# (f(c·x) = c·f(x) for c > 0). Listed by tfsd.models.rewrite (a projection shortcut may hold them)
# and tfsd.models.folding (scale-equivariant layers).
POOLING = (
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.AveragePooling3D,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.MaxPooling3D,
)


# -------------------------------------------------------------------------------------------------
# Stochastic-depth settings.
# -------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SDConfig:
    """The stochastic-depth settings of a model, shared by every builder (``sd=``).

    Attributes:
      survival_prob: p = 1 − r in (0, 1], the end point of the schedule ``rule`` (see
        `tfsd.layers.survival_schedule`): the paper's p_L for "linear" (the last block survives
        with exactly p), the TF EfficientNet reference's ``survival_prob`` for "efficientnet"
        (block i of N survives with 1 − r·i/N; no block reaches p). 1.0 builds no
        stochastic-depth layer at all.
      mode: "batch" (one gate per mini-batch, dropped branches skipped) or "sample".
      scale_at: "inference" (the paper: × p at inference) or "train" (inverted: ÷ p in training).
      rule: a name of `tfsd.layers.SCHEDULES`.
      seed: base seed of the blocks' gate streams (block i gets `block_seed`); None lets each
        layer draw its own.
      sync_replicas: every replica draws the same gates (needed with synchronized BatchNorm).
      sample_skip: in sample mode, run branches on the kept examples only; None takes the model
        family's default.
      sample_skip_min_drop: with ``sample_skip``, only blocks whose drop probability 1 − p_l is at
        least this value skip; the others use the mask form (same gates). Gathering and
        scattering the kept examples costs passes over the block's activations whatever p_l is,
        while the compute saved scales with 1 − p_l: on the CPU benchmark (README) skipping the
        first stage of ResNet-110 (1 − p_l < 1/6, the largest activations) cost more than it
        saved. 0.0 (default): every block skips.
    """

    survival_prob: float = 1.0
    mode: str = "batch"
    scale_at: str = "inference"
    rule: str = "linear"
    seed: int | None = 0
    sync_replicas: bool = False
    sample_skip: bool | None = None
    sample_skip_min_drop: float = 0.0

    def __post_init__(self):
        # Error messages name the builders' keyword arguments (sd_mode, sd_scale_at, rule…).
        if self.mode not in sd_layers.MODES:
            raise ValueError(f"Unknown sd_mode {self.mode!r}; expected one of {sd_layers.MODES}.")
        if self.scale_at not in sd_layers.SCALE_AT:
            raise ValueError(
                f"Unknown sd_scale_at {self.scale_at!r}; expected {sd_layers.SCALE_AT}."
            )
        # Validates survival_prob (as "final_survival") and the rule name.
        sd_layers.survival_schedule(1, self.survival_prob, self.rule)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}.")
        if not isinstance(self.sync_replicas, bool):
            raise ValueError(f"sync_replicas must be a bool, got {self.sync_replicas!r}.")
        resolve_sample_skip(self.sample_skip, self.mode, False)
        v = self.sample_skip_min_drop
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
            raise ValueError(f"sample_skip_min_drop must be a number in [0, 1), got {v!r}.")

    def skips_examples(self, sample_skip: bool, survival_prob: float) -> bool:
        """Whether a block of ``survival_prob`` runs its branch on the kept examples only."""
        return sample_skip and 1.0 - survival_prob >= self.sample_skip_min_drop

    def replace(self, **changes: Any) -> SDConfig:
        """A copy with ``changes`` (field names), validated."""
        return dataclasses.replace(self, **changes)

    def schedule(self, num_blocks: int) -> list[float]:
        """Survival probability of each of ``num_blocks`` blocks under `rule`."""
        return sd_layers.survival_schedule(num_blocks, self.survival_prob, self.rule)

    def block_seed(self, index: int) -> int | None:
        """Seed of block ``index`` (`block_seed`)."""
        return block_seed(self.seed, index)

    def check_sync_bn(self, sync_bn: bool, sample_skip: bool) -> None:
        """Refuses synchronized BatchNorm with gates that differ between replicas and skip."""
        skips = self.mode == "batch" or sample_skip
        if sync_bn and not self.sync_replicas and skips and self.survival_prob < 1.0:
            # Replicas drawing different gates would take different tf.cond / switch_case
            # branches around a cross-replica all-reduce and hang (see tfsd.layers, "Randomness").
            raise ValueError(
                "sync_bn=True with skipping stochastic depth (sd_mode='batch' or sample_skip) "
                "needs sync_replicas=True."
            )


# Builder keyword argument → SDConfig field. The keyword names are the public API of
# create_model and of configs' ``model.overrides`` (``--config.model.overrides.rule=linspace``).
SD_KEYWORDS = {
    "survival_prob": "survival_prob",
    "sd_mode": "mode",
    "sd_scale_at": "scale_at",
    "rule": "rule",
    "seed": "seed",
    "sync_replicas": "sync_replicas",
    "sample_skip": "sample_skip",
    "sample_skip_min_drop": "sample_skip_min_drop",
}


def sd_builder(default: SDConfig) -> Callable:
    """Decorates a builder taking ``sd: SDConfig`` so that it also takes the `SD_KEYWORDS`.

    ``builder(sd=SDConfig(...))`` and ``builder(survival_prob=0.5, sd_mode="sample")`` both work:
    keywords replace fields of ``sd`` (or of ``default``, the family's settings, kept as
    ``builder.sd_default``). The translation and validation live here once instead of in every
    builder's signature.
    """
    if not isinstance(default, SDConfig):
        raise ValueError(f"default must be an SDConfig, got {type(default).__name__}.")

    def decorate(fn: Callable[..., keras.Model]) -> Callable[..., keras.Model]:
        @functools.wraps(fn)
        def builder(*, sd: SDConfig | None = None, **kwargs: Any) -> keras.Model:
            if sd is not None and not isinstance(sd, SDConfig):
                raise ValueError(f"sd must be an SDConfig, got {type(sd).__name__}.")
            changes = {SD_KEYWORDS[k]: kwargs.pop(k) for k in list(kwargs) if k in SD_KEYWORDS}
            return fn(sd=(default if sd is None else sd).replace(**changes), **kwargs)

        builder.sd_default = default
        return builder

    return decorate


# -------------------------------------------------------------------------------------------------
# Heads and normalisation.
# -------------------------------------------------------------------------------------------------

POOLINGS = (None, "avg", "max")


def check_head(include_top: bool, pooling: str | None) -> None:
    """Validates a builder's ``include_top`` and ``pooling`` (keras.applications' arguments).

    keras.applications ignores ``pooling`` when ``include_top=True`` and any unknown value; here
    both are errors, so a typo cannot silently return a 4-D feature map.
    """
    if not isinstance(include_top, bool):
        raise ValueError(f"include_top must be a bool, got {include_top!r}.")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}.")
    if include_top and pooling is not None:
        raise ValueError(
            f"pooling={pooling!r} applies to feature extractors (include_top=False); the "
            f"classifier head always average-pools."
        )


def feature_pooling(x: keras.KerasTensor, pooling: str | None) -> keras.KerasTensor:
    """The ``include_top=False`` output: the feature map, or its global average / max.

    Layer names as keras.applications (``keras/src/applications/resnet.py``): ``avg_pool`` (the
    same layer name as the classifier's pooling, so features equal the top model's penultimate
    activations by name) and ``max_pool``.
    """
    if pooling == "avg":
        return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def block_seed(seed: int | None, index: int) -> int | None:
    """Seed of block ``index`` in a model built with ``seed`` (None: each layer draws its own).

    Distinct seeds are not needed for independence any more (every gate key also holds a hash of
    the layer's name, see `tfsd.layers`), but they keep each block's stream what it was for a
    given ``seed`` and name.
    """
    return None if seed is None else seed * 100_003 + index


def resolve_sample_skip(sample_skip: bool | None, sd_mode: str, default: bool) -> bool:
    """A builder's ``sample_skip`` argument: None takes the family's ``default`` in sample mode.

    Batch mode always skips whole branches, so there ``sample_skip`` must be None or False.
    """
    if sample_skip is None:
        return default and sd_mode == "sample"
    if not isinstance(sample_skip, bool):
        raise ValueError(f"sample_skip must be a bool or None, got {sample_skip!r}.")
    if sample_skip and sd_mode != "sample":
        raise ValueError(f"sample_skip=True needs sd_mode='sample', got sd_mode={sd_mode!r}.")
    return sample_skip


def residual(
    x: keras.KerasTensor,
    branch_fn: Callable[[keras.KerasTensor], keras.KerasTensor],
    *,
    name: str,
    sd: SDConfig,
    index: int,
    survival_prob: float,
    sample_skip: bool,
    shortcut: keras.KerasTensor | None = None,
) -> keras.KerasTensor:
    """``shortcut + branch_fn(x)`` with stochastic depth on the branch.

    ``index`` is the block's position in the schedule (its seed is ``sd.block_seed(index)``),
    ``survival_prob`` its rate from ``sd.schedule``, ``sample_skip`` the family-resolved flag
    (applied where ``sd.skips_examples`` says so).
    With ``survival_prob == 1.0`` the branch layers are inlined and joined by a plain ``Add``
    (``{name}add``): no stochastic-depth layer at all. Otherwise the branch becomes a functional
    sub-model ``{name}branch`` (its layers keep their own names, so weights still port by name)
    wrapped in a `tfsd.layers.StochasticResidual` named ``{name}drop``, which skips the branch's
    compute when a batch-mode gate drops it (and, with ``sample_skip``, for dropped examples).
    """
    shortcut = x if shortcut is None else shortcut
    if survival_prob == 1.0:
        return keras.layers.Add(name=f"{name}add")([shortcut, branch_fn(x)])
    inp = keras.Input(shape=x.shape[1:], dtype=x.dtype, name=f"{name}branch_input")
    branch = keras.Model(inp, branch_fn(inp), name=f"{name}branch")
    layer = sd_layers.StochasticResidual(
        branch,
        survival_prob,
        mode=sd.mode,
        scale_at=sd.scale_at,
        sync_replicas=sd.sync_replicas,
        seed=sd.block_seed(index),
        sample_skip=sd.skips_examples(sample_skip, survival_prob),
        name=f"{name}drop",
    )
    return layer(x, shortcut=None if shortcut is x else shortcut)


@keras.saving.register_keras_serializable(package="tfsd")
class ReplicaDropout(keras.layers.Dropout):
    """``keras.layers.Dropout`` whose masks differ across the replicas of a ``tf.distribute`` run.

    Keras' Dropout draws from a ``SeedGenerator`` whose state is one mirrored variable
    (``keras/src/random/seed_generator.py``, ``next()``), so every replica drew the same mask for
    its share of the batch. Here the replica id is folded into the drawn seed, as the
    stochastic-depth gates do (``stateless_fold_in(seed, replica_id)``, `tfsd.layers`). With one
    replica (or none) the layer is exactly Keras' Dropout: same seeds, same masks.
    """

    def call(self, inputs, training=False):
        ctx = tf.distribute.get_replica_context()
        if not (training and self.rate > 0) or ctx is None or ctx.num_replicas_in_sync == 1:
            return super().call(inputs, training=training)
        seed = tf.cast(self.seed_generator.next(), tf.int64)
        seed = tf.random.experimental.stateless_fold_in(
            seed, tf.cast(ctx.replica_id_in_sync_group, tf.int32), alg="philox"
        )
        shape = tf.shape(inputs)
        if self.noise_shape is not None:  # as keras' _get_concrete_noise_shape
            shape = [shape[i] if d is None else d for i, d in enumerate(self.noise_shape)]
        # As keras' TF backend casts its int64 seeds for the stateless ops (`_cast_seed`).
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        return tf.nn.experimental.stateless_dropout(inputs, self.rate, seed, noise_shape=shape)
