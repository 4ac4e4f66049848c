"""Importing keras.applications EfficientNet weights into tfsd EfficientNets.

`load_keras_applications_weights` copies a keras.applications EfficientNet (a model, a legacy
``.h5`` or a Keras 3 ``.weights.h5`` file) into the tfsd EfficientNet of the same architecture
(`tfsd.models.efficientnet`), matching keras.applications layer names and checking every shape,
and reconciles the input normalisation and the stochastic-depth scaling convention.

See docs/models.md, "Reference: tfsd/models/import_keras.py" (weight sources, input
normalisation, stochastic-depth scaling).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import h5py  # a Keras dependency
import keras
import numpy as np

from tfsd import layers as sd_layers
from tfsd.models import common
from tfsd.models.folding import match_inverted_scaling, refresh_normalization

# keras.applications efficientnet.py's IMAGENET_STDDEV_RGB (the same numbers as tfsd's ImageNet
# std): the extra Rescaling is 1/sqrt of these. keras.applications adds it only with
# weights="imagenet", whose Normalization holds stds where variances belong (tensorflow#49930).
IMAGENET_STDDEV_RGB = common.IMAGENET_STD

# -------------------------------------------------------------------------------------------------
# Walking models.
# -------------------------------------------------------------------------------------------------


def _own_variables(layer: keras.layers.Layer) -> list:
    """The variables a layer saves itself, in Keras' order (trainable first)."""
    return list(layer._trainable_variables) + list(layer._non_trainable_variables)


def _leaf_layers(layer: keras.layers.Layer) -> Iterator[keras.layers.Layer]:
    """Weight-carrying layers in graph order, nested sub-models and residual branches included.

    tfsd's own stochastic-depth layers (their step counters are not keras.applications weights)
    are stepped over; their branches are walked.
    """
    if isinstance(layer, keras.Model):
        for sub in layer.layers:
            yield from _leaf_layers(sub)
    elif isinstance(layer, sd_layers.StochasticResidual):
        yield from _leaf_layers(layer.branch)
    elif not isinstance(layer, sd_layers.StochasticDepth) and _own_variables(layer):
        yield layer


def _snake_case(name: str) -> str:
    """Keras' ``naming.to_snake_case``: the group names of a Keras 3 ``.weights.h5`` file."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


# -------------------------------------------------------------------------------------------------
# Sources: a dict {tfsd layer name: [arrays]}, the source's Normalization arrays and the chain of
# input scalings it applies ("rescale" and "normalize" steps).
# -------------------------------------------------------------------------------------------------


class _Source:
    def __init__(self, description: str):
        self.description = description
        self.arrays: dict[str, list[np.ndarray]] = {}  # by keras.applications layer name
        self.normalization: list[np.ndarray] | None = None  # mean, variance(, count)
        self.extra_scale: np.ndarray | None = None  # the weights="imagenet" extra Rescaling
        self.input_chain: list | None = None  # exact chain, when the source knows it


def _model_source(model: keras.Model) -> _Source:
    src = _Source(f"model {model.name!r}")
    for layer in _leaf_layers(model):
        arrays = [np.asarray(v) for v in _own_variables(layer)]
        if isinstance(layer, keras.layers.Normalization):
            src.normalization = arrays
        elif layer.name in src.arrays:
            raise ValueError(
                f"{src.description} has two weight-carrying layers named {layer.name!r}."
            )
        else:
            src.arrays[layer.name] = arrays
    # The exact input chain: every Rescaling/Normalization before the first convolution.
    chain = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Rescaling):
            chain.append(("rescale", np.asarray(layer.scale, "float64"), float(layer.offset)))
        elif isinstance(layer, keras.layers.Normalization):
            if layer.invert:
                raise ValueError(f"{src.description}: inverted Normalization is not supported.")
            mean = np.asarray(keras.ops.convert_to_numpy(layer.mean), "float64").reshape(-1)
            var = np.asarray(keras.ops.convert_to_numpy(layer.variance), "float64").reshape(-1)
            chain.append(("normalize", mean, var))
        elif _own_variables(layer) or isinstance(layer, keras.Model):
            break
    src.input_chain = chain
    return src


def _read_legacy_h5(f: Any, path: str, imagenet_rescaling: bool | None) -> _Source:
    """Legacy (Keras 2) HDF5: ``layer_names`` attribute, one group per layer name."""
    src = _Source(f"legacy HDF5 file {path!r}")
    config = f.attrs.get("model_config")
    if "layer_names" not in f.attrs and "model_weights" in f:
        f = f["model_weights"]  # a full-model save: weights live in this group
    decode = lambda s: s.decode("utf8") if isinstance(s, bytes) else str(s)  # noqa: E731
    for name in map(decode, f.attrs["layer_names"]):
        group = f[name]
        weight_names = [decode(w) for w in group.attrs.get("weight_names", [])]
        if not weight_names:
            continue
        arrays = [np.asarray(group[w]) for w in weight_names]
        if re.fullmatch(r"normalization(_\d+)?", name):
            src.normalization = arrays
        else:
            src.arrays[name] = arrays
    if imagenet_rescaling is None and config is not None and src.normalization is not None:
        # A full-model file knows its input chain: Rescaling/Normalization before the first conv.
        src.input_chain = []
        for layer in json.loads(decode(config))["config"]["layers"]:
            cls, cfg = layer["class_name"], layer["config"]
            if cls == "Rescaling":
                scale = np.asarray(cfg["scale"], "float64")
                src.input_chain.append(("rescale", scale, float(cfg.get("offset", 0.0))))
            elif cls == "Normalization":
                mean, var = (np.asarray(w, "float64").reshape(-1) for w in src.normalization[:2])
                src.input_chain.append(("normalize", mean, var))
            elif cls not in ("InputLayer", "ZeroPadding2D"):
                break
        return src
    if imagenet_rescaling is None:
        # A weights-only legacy file is keras.applications' ImageNet file: it always applies the
        # extra rescaling with it.
        imagenet_rescaling = True
    if imagenet_rescaling:
        src.extra_scale = 1.0 / np.sqrt(np.asarray(IMAGENET_STDDEV_RGB, "float64"))
    return src


def _read_keras3_h5(
    f: Any, path: str, leaves: Sequence[keras.layers.Layer], imagenet_rescaling: bool | None
) -> _Source:
    """Keras 3 ``.weights.h5``: ``layers/<snake class>[_k]/vars/<i>``, numbered in layer order."""
    src = _Source(f"Keras 3 weights file {path!r}")
    groups = f["layers"]
    counts: dict[str, int] = {}
    used = set()
    for layer in leaves:
        cls = _snake_case(type(layer).__name__)
        k = counts.get(cls, 0)
        counts[cls] = k + 1
        key = cls if k == 0 else f"{cls}_{k}"
        if key not in groups:
            continue  # reported as missing by the caller
        used.add(key)
        vars_group = groups[key].get("vars", {})
        arrays = [np.asarray(vars_group[str(i)]) for i in range(len(vars_group))]
        if isinstance(layer, keras.layers.Normalization):
            src.normalization = arrays
        else:
            src.arrays[layer.name] = arrays
    # Every weight-carrying group of the file must have been claimed by a layer of the model.
    extra = sorted(k for k, g in groups.items() if len(g.get("vars", {})) and k not in used)
    if extra:
        raise ValueError(
            f"{src.description} has weights the model has no counterpart for: {extra[:8]} (groups "
            f"are numbered per layer class in layer order). The architectures differ: variant, "
            f"include_top?"
        )
    if imagenet_rescaling is None:
        # The file does not record Rescaling layers, but the extra one leaves a second group.
        imagenet_rescaling = "rescaling_1" in groups
    if imagenet_rescaling:
        src.extra_scale = 1.0 / np.sqrt(np.asarray(IMAGENET_STDDEV_RGB, "float64"))
    return src


def _file_source(
    path: str, leaves: Sequence[keras.layers.Layer], imagenet_rescaling: bool | None
) -> _Source:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at {path!r}.")
    if path.endswith(".keras"):
        raise ValueError(
            f"{path!r} is a .keras archive: load it with keras.saving.load_model(...) and pass the "
            f"model, or pass its weights file."
        )
    if not h5py.is_hdf5(path):
        raise ValueError(f"{path!r} is not an HDF5 weights file (.h5 or .weights.h5).")
    with h5py.File(path, "r") as f:
        if "layer_names" in f.attrs or "model_weights" in f:
            return _read_legacy_h5(f, path, imagenet_rescaling)
        if "layers" in f:
            return _read_keras3_h5(f, path, leaves, imagenet_rescaling)
    raise ValueError(
        f"{path!r} is HDF5 but neither a legacy Keras weights file (no 'layer_names') nor a "
        f"Keras 3 .weights.h5 file (no 'layers' group)."
    )


# -------------------------------------------------------------------------------------------------
# Normalisation folding.
# -------------------------------------------------------------------------------------------------


def _affine(chain: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (a, b) with chain(x) = a·x + b (Keras' Normalization divides by sqrt(var))."""
    a, b = np.ones(1), np.zeros(1)
    eps = keras.config.epsilon()
    for step in chain:
        if step[0] == "rescale":
            _, scale, offset = step
            a, b = a * scale, b * scale + offset
        else:
            _, mean, var = step
            d = np.maximum(np.sqrt(var), eps)
            a, b = a / d, (b - mean) / d
    return a, b


def _fold_normalization(model: keras.Model, src: _Source) -> None:
    """Sets tfsd's ``normalization`` so that rescaling + normalization equal the source's chain."""
    kinds = (keras.layers.Rescaling, keras.layers.Normalization)
    ours = [layer for layer in model.layers if isinstance(layer, kinds)]
    names = [type(lay).__name__ for lay in ours]
    if names != ["Rescaling", "Normalization"] or ours[0].offset != 0:
        raise ValueError(
            f"Model {model.name!r} must normalise its input with one Rescaling (no offset) and one "
            f"Normalization layer (tfsd.models.common.normalize_pixels); found {names}."
        )
    rescaling, norm = ours
    if src.input_chain is not None:
        chain = src.input_chain
    else:
        if src.normalization is None:
            raise ValueError(f"{src.description} has no Normalization layer weights.")
        mean, var = (np.asarray(w, "float64").reshape(-1) for w in src.normalization[:2])
        chain = [("rescale", np.asarray(1.0 / 255.0), 0.0), ("normalize", mean, var)]
        if src.extra_scale is not None:
            chain.append(("rescale", src.extra_scale, 0.0))
    a, b = _affine(chain)
    channels = norm.adapt_mean.shape[-1]
    a, b = np.broadcast_to(a, (channels,)), np.broadcast_to(b, (channels,))
    if np.any(a <= 0) or not np.all(np.isfinite(a)) or not np.all(np.isfinite(b)):
        raise ValueError(f"{src.description}: cannot fold input scaling {a}, offset {b}.")
    # ours: (s·x − m) / sd = a·x + b  ⇒  sd = s / a,  m = −b·sd.
    sd = np.asarray(rescaling.scale, "float64") / a
    norm.adapt_mean.assign((-b * sd).astype("float32"))
    norm.adapt_variance.assign(np.square(sd).astype("float32"))
    refresh_normalization(model)


# -------------------------------------------------------------------------------------------------
# The importer.
# -------------------------------------------------------------------------------------------------


def load_keras_applications_weights(
    model: keras.Model,
    source: keras.Model | str | os.PathLike,
    *,
    imagenet_rescaling: bool | None = None,
    skip_layers: Sequence[str] = (),
) -> list[str]:
    """Copies keras.applications EfficientNet weights into a tfsd EfficientNet.

    Every weight-carrying layer of ``model`` (nested branch sub-models included) gets the weights
    of the source layer with the same keras.applications name, after a shape check; the input
    normalisation and the stochastic-depth scaling convention are reconciled (docs/models.md),
    so ``model(x, training=False)`` equals the source's output for every input.

    Example:
      >>> model = create_model("efficientnet_b0", num_classes=1000)
      >>> load_keras_applications_weights(model, "~/.keras/models/efficientnetb0.h5")

    Args:
      model: a tfsd EfficientNet (`tfsd.models.efficientnet`) of the source's architecture.
      source: a ``keras.applications.EfficientNetB*`` model, or the path of its weights: a legacy
        ``.h5`` file (the ImageNet files keras.applications ships) or a Keras 3 ``.weights.h5``.
      imagenet_rescaling: for file sources, whether the source applies keras.applications' extra
        ``weights="imagenet"`` Rescaling(1/sqrt(std)); None guesses (docs/models.md). Must be
        None for a model source, whose layers say it exactly.
      skip_layers: names of ``model`` layers to leave as initialised, e.g. ``("predictions",)`` to
        fine-tune a new classifier from ``efficientnetb0_notop.h5``.

    Returns:
      The names of the layers whose weights were copied (the normalization layer included).

    Raises:
      FileNotFoundError: ``source`` is a path that does not exist.
      ValueError: ``source`` is neither a model nor a weights file; a layer of either side has
        no counterpart; a weight's shape differs (the message names the layer).
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}.")
    leaves = list(_leaf_layers(model))
    if isinstance(source, keras.Model):
        if imagenet_rescaling is not None:
            raise ValueError("imagenet_rescaling applies to file sources only.")
        src = _model_source(source)
    elif isinstance(source, (str, os.PathLike)):
        src = _file_source(os.path.expanduser(os.fspath(source)), leaves, imagenet_rescaling)
    else:
        raise ValueError(
            f"source must be a keras.applications EfficientNet model or the path of its weights "
            f"file, got {type(source).__name__}."
        )

    skip = set(skip_layers)
    names = {lay.name for lay in leaves}
    unknown = skip - names
    if unknown:
        raise ValueError(
            f"skip_layers {sorted(unknown)} are not weight-carrying layers of the model."
        )
    extra = sorted(set(src.arrays) - names - skip)
    if extra:
        raise ValueError(
            f"{src.description} has weights for layers the model {model.name!r} lacks: {extra[:8]}"
            f"{' …' if len(extra) > 8 else ''}. Are the architectures the same (variant, "
            f"include_top)? Pass skip_layers to leave model layers out."
        )

    # Check everything before assigning anything, so a failed import leaves the model unchanged.
    plan = []
    for layer in leaves:
        if layer.name in skip or isinstance(layer, keras.layers.Normalization):
            continue
        if layer.name not in src.arrays:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) of model {model.name!r} has no "
                f"weights in {src.description}. Pass skip_layers=[{layer.name!r}] to keep its "
                f"initial weights."
            )
        arrays, variables = src.arrays[layer.name], _own_variables(layer)
        if len(arrays) != len(variables):
            raise ValueError(
                f"Layer {layer.name!r}: {src.description} has {len(arrays)} weights, the model "
                f"has {len(variables)} ({[v.name for v in variables]})."
            )
        for array, variable in zip(arrays, variables, strict=True):
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(
                    f"Layer {layer.name!r}: weight {variable.name!r} has shape "
                    f"{tuple(variable.shape)} in the model but {tuple(array.shape)} in "
                    f"{src.description}."
                )
        plan.append((layer, arrays, variables))
    norm_layers = [lay for lay in leaves if isinstance(lay, keras.layers.Normalization)]
    if norm_layers and norm_layers[0].name not in skip:
        _fold_normalization(model, src)
    for _, arrays, variables in plan:
        for array, variable in zip(arrays, variables, strict=True):
            variable.assign(array.astype(variable.dtype))

    # keras.applications scales at training time; fold 1/p where the model scales at inference.
    match_inverted_scaling(model)
    refresh_normalization(model)  # the new statistics in use, compiled functions dropped
    copied = [layer.name for layer, _, _ in plan]
    return (
        [norm_layers[0].name] if norm_layers and norm_layers[0].name not in skip else []
    ) + copied
