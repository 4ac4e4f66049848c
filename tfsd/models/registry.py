"""The one model registry: ``create_model(name, ...)`` and ``list_models()``.

A registry key is the model's ``model.name`` and, where a config exists for it, its
``--config`` name (``efficientnet_b0`` → ``configs/efficientnet.py``, variant ``b0``). Builders
are plain functions returning functional ``keras.Model`` objects; a variant is one registered call
with keyword scale factors (as in timm), never a copy of a builder.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import keras

from tfsd.models.common import SDConfig


class ModelInfo(NamedTuple):
    """What a registered model expects and holds, without building it (timm's ``default_cfg``).

    `create_model` takes the input size from here when ``input_shape`` is None; data pipelines
    and configs can read the resolution and normalisation from here instead of repeating them.
    """

    input_size: tuple[int, int, int]  # default (height, width, channels)
    mean: tuple[float, ...]  # per-channel input statistics of [0, 1] images, applied in the model
    std: tuple[float, ...]
    num_blocks: int  # N, the blocks the survival schedule counts
    num_sd_blocks: int  # blocks that get a stochastic-depth layer when survival_prob < 1
    sd: SDConfig  # default stochastic-depth settings


_REGISTRY: dict[str, Callable[..., keras.Model]] = {}
_INFO: dict[str, ModelInfo] = {}


def register(
    name: str, builder: Callable[..., keras.Model], *, info: ModelInfo, **defaults: Any
) -> None:
    """Registers ``builder`` under ``name`` with keyword ``defaults`` bound (timm-style variant).

    The builder must accept ``name``, ``num_classes``, ``input_shape`` and the stochastic-depth
    keywords of `tfsd.models.common.SD_KEYWORDS` (`tfsd.models.common.sd_builder` provides them).
    ``info`` describes the registered variant (`get_model_info`).
    """
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    if not isinstance(info, ModelInfo):
        raise ValueError(f"info must be a ModelInfo, got {type(info).__name__}.")
    _REGISTRY[name] = functools.partial(builder, name=name, **defaults)
    _INFO[name] = info


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def get_builder(name: str) -> Callable[..., keras.Model]:
    """The registered builder for ``name``; unknown names get an error listing close matches."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, _REGISTRY, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model {name!r}.{hint} Available: {', '.join(list_models())}.")
    return _REGISTRY[name]


def get_model_info(name: str) -> ModelInfo:
    """The `ModelInfo` of ``name``: default input size, normalisation, block counts, SD settings.

    Example:
      >>> get_model_info("efficientnet_b3").input_size
      (300, 300, 3)
    """
    get_builder(name)  # the unknown-name error with suggestions
    return _INFO[name]


def default_input_size(name: str) -> tuple[int, int, int]:
    """``(height, width, channels)`` that ``create_model(name, ...)`` builds by default."""
    return get_model_info(name).input_size


def create_model(
    name: str,
    *,
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] | None = None,
    survival_prob: float | None = None,
    sd_mode: str | None = None,
    sd_scale_at: str | None = None,
    **overrides: Any,
) -> keras.Model:
    """Builds the registered model ``name``.

    Args:
      name: a key of `list_models()`.
      num_classes: size of the classifier head.
      input_shape: ``(height, width, 3)``; None uses `default_input_size` (``name``).
      survival_prob: p = 1 − r, the end point of the model's survival schedule
        (`tfsd.layers.survival_schedule`; what the last block gets depends on the rule: exactly
        p for the ResNets' "linear", ``1 − r·(N−1)/N`` for EfficientNet's "efficientnet").
        ``1.0`` adds no stochastic-depth layer. None keeps the model's default.
      sd_mode: "batch" or "sample"; None keeps the model's default.
      sd_scale_at: "inference" or "train"; None keeps the model's default.
      **overrides: builder keyword arguments: the other stochastic-depth settings (``rule``,
        ``seed``, ``sync_replicas``, ``sample_skip``, or a whole ``sd=SDConfig(...)``) and
        architecture ones (``width``, ``mean``, ``include_top``, ``pooling``…).

    Returns:
      A functional ``keras.Model`` named ``name`` taking images with values in [0, 255].
    """
    builder = get_builder(name)
    kwargs = dict(overrides)
    if input_shape is None:
        input_shape = _INFO[name].input_size
    for key, value in (
        ("input_shape", input_shape),
        ("survival_prob", survival_prob),
        ("sd_mode", sd_mode),
        ("sd_scale_at", sd_scale_at),
    ):
        if value is not None:
            kwargs[key] = value
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    return builder(num_classes=num_classes, **kwargs)
