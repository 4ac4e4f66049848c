"""Fine-tuning: a fresh run's initial weights from pretrained files or another run.

``config.init.from`` (a run, a checkpoint, or any file `tfsd.models.load_pretrained` reads:
keras.applications ``.h5``, ``.keras``, PyTorch ``.safetensors`` / ``.pth`` / ``.pt`` /
``.bin``), ``config.init.arch``, ``config.init.skip`` and ``config.init.freeze_steps``. See
``docs/training.md``, "Fine-tuning from pretrained weights".
"""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from tfsd import models
from tfsd.training import run_dir


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
    models.refresh_normalization(model)  # the copied normalisation statistics in use
    if problems:
        raise ValueError(
            "init.from does not fit the model (add differing layers, e.g. the head "
            "'predictions', to --config.init.skip):\n  " + "\n  ".join(problems[:10])
        )
    return sorted(copied)


def initialize_from(config, model: keras.Model, data_dir: str | None = None) -> list[str]:
    """Loads ``config.init.from`` into ``model`` (a fresh run's), skipping ``config.init.skip``.

    Dispatch on the path: a directory or a checkpoint prefix (``PREFIX.index`` exists) is a
    tfsd run (`tfsd.training.run_dir.restore_run`, EMA weights when kept, copied by weight path);
    ``.keras`` a saved model, a tfsd one copied by weight path; every other file (and a
    non-tfsd ``.keras`` model) goes to `tfsd.models.load_pretrained` (keras.applications
    ``.h5``, PyTorch ``.safetensors`` / ``.pth`` / ``.pt`` / ``.bin`` for ResNets and
    EfficientNets; ``config.init.arch`` names a timm EfficientNet source).

    Returns:
      The names of the layers that received weights.
    """
    path = os.path.expanduser(str(config.init.source))
    skip = init_skip_layers(config)
    if tf.io.gfile.isdir(path) or tf.io.gfile.exists(path + ".index"):
        model_dir, checkpoint = path, None
        if not tf.io.gfile.isdir(path):  # RUN/checkpoints/ckpt-N
            model_dir, checkpoint = os.path.dirname(os.path.dirname(path)), path
        source, *_ = run_dir.restore_run(model_dir, checkpoint=checkpoint, data_dir=data_dir)
        return copy_weights_by_path(source, model, skip)
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"init.from: {path} does not exist.")
    if path.endswith(".keras"):
        source = keras.saving.load_model(path, compile=False)
        layers = source._flatten_layers(include_self=False)  # noqa: SLF001
        if any(type(lay).__module__.startswith("tfsd.") for lay in layers):
            return copy_weights_by_path(source, model, skip)
        return models.load_pretrained(model, source, skip_layers=skip)
    # Every other file: keras.applications .h5, .safetensors, PyTorch .pth/.pt/.bin.
    suffixes = models.pretrained.KERAS_SUFFIXES + models.pretrained.STATE_DICT_SUFFIXES
    if not path.endswith(suffixes):
        raise ValueError(
            f"init.from: {path} is not a run directory, a checkpoint prefix, or a weights file "
            f"({', '.join(suffixes)}; docs/import_matrix.md)."
        )
    options = {"skip_layers": skip}
    arch = str(config.init.get("arch", "") or "")
    if arch:
        options["arch"] = arch
    return models.load_pretrained(model, path, **options)


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
