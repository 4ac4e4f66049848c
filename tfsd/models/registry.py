"""The one model registry: ``create_model(name, ...)`` and ``list_models()``.

A registry key is the model's ``model.name`` and, where a config exists for it, the name of the
config file in ``configs/`` (``efficientnet_b0`` → ``configs/efficientnet_b0.py``). Builders are
plain functions returning functional ``keras.Model`` objects; a variant is one registered call with
keyword scale factors (as in timm), never a copy of a builder.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from typing import Any

import keras

_REGISTRY: dict[str, Callable[..., keras.Model]] = {}


def register(name: str, builder: Callable[..., keras.Model], **defaults: Any) -> None:
    """Registers ``builder`` under ``name`` with keyword ``defaults`` bound (timm-style variant).

    The builder must accept ``name``, ``num_classes``, ``input_shape``, ``survival_prob``,
    ``sd_mode`` and ``sd_scale_at`` as keyword arguments.
    """
    if name in _REGISTRY:
        raise ValueError(f"Model {name!r} is already registered.")
    _REGISTRY[name] = functools.partial(builder, name=name, **defaults)


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
      input_shape: ``(height, width, 3)``; None uses the model's default resolution.
      survival_prob: survival probability of the *last* block (p_L); earlier blocks follow the
        model's schedule (see each builder's docstring). ``1.0`` adds no stochastic-depth layer.
        None keeps the model's default.
      sd_mode: "batch" or "sample"; None keeps the model's default.
      sd_scale_at: "inference" or "train"; None keeps the model's default.
      **overrides: builder-specific keyword arguments (e.g. ``width``, ``seed``, ``mean``).

    Returns:
      A functional ``keras.Model`` named ``name`` taking images with values in [0, 255].
    """
    builder = get_builder(name)
    kwargs = dict(overrides)
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
