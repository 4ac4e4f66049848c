"""Pieces shared by the model builders: input normalisation and stochastic residual blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np

from tfsd import layers as sd_layers

# Per-channel RGB statistics of images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# CIFAR statistics as used by the fb.resnet.torch / stochastic-depth Torch code.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SVHN_MEAN = (0.4377, 0.4438, 0.4728)
SVHN_STD = (0.1980, 0.2010, 0.1970)


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
    survival_prob: float,
    sd_mode: str,
    sd_scale_at: str,
    seed: int | None,
    shortcut: keras.KerasTensor | None = None,
    sync_replicas: bool = False,
    sample_skip: bool = False,
) -> keras.KerasTensor:
    """``shortcut + branch_fn(x)`` with stochastic depth on the branch.

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
        mode=sd_mode,
        scale_at=sd_scale_at,
        sync_replicas=sync_replicas,
        seed=seed,
        sample_skip=sample_skip,
        name=f"{name}drop",
    )
    return layer(x, shortcut=None if shortcut is x else shortcut)
