"""Importing PyTorch ResNet weights (torchvision / timm state dicts in ``.safetensors``).

`load_torch_resnet_weights` copies a torchvision or timm ResNet state dict (torchvision
``resnet.py`` naming) into the tfsd ResNet of the same architecture (`tfsd.models.resnet`), tensor
by tensor, checking every shape before it assigns anything. The file is read with
``safetensors.numpy``: no torch at run time.

See docs/models.md, "Reference: tfsd/models/import_torch.py" (which models map, name mapping,
tensor layouts, BatchNorm epsilon, input normalisation, stochastic-depth scaling).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np
from safetensors import SafetensorError  # setup.py install_requires
from safetensors.numpy import load_file

from tfsd.models import common
from tfsd.models.folding import match_inverted_scaling

# The keras.applications importer's model walk and input-normalisation fold, shared.
from tfsd.models.import_keras import _fold_normalization, _leaf_layers, _own_variables, _Source

TORCH_BN_EPSILON = 1e-5  # torch.nn.BatchNorm2d's default eps, used by torchvision and timm
# Heads of the sources that map: torchvision/timm ``fc``, akamaster's CIFAR ResNets ``linear``.
_HEADS = ("fc", "linear")
# A tfsd ResNet block layer: conv{stage}_block{block}_{z}_{conv|bn}; z = 0 is the projection.
_BLOCK_LAYER = re.compile(r"conv(\d+)_block(\d+)_(\d)_(conv|bn)")
# Keras BatchNormalization variable name → torch BatchNorm2d tensor suffix.
_BN_TENSORS = {
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """OIHW (torch ``Conv2d.weight``) → HWIO (Keras ``Conv2D.kernel``)."""
    return np.transpose(w, (2, 3, 1, 0))


def _torch_prefix(layer_name: str, head: str) -> str | None:
    """The torch module path of a tfsd ResNet layer, or None when it has no counterpart."""
    if layer_name == "conv1_conv":
        return "conv1"
    if layer_name == "conv1_bn":
        return "bn1"
    if layer_name == "predictions":
        return head
    match = _BLOCK_LAYER.fullmatch(layer_name)
    if match is None:
        return None
    stage, block, z, kind = match.groups()
    prefix = f"layer{int(stage) - 1}.{int(block) - 1}."
    if z == "0":
        return prefix + ("downsample.0" if kind == "conv" else "downsample.1")
    return prefix + f"{kind}{z}"


def torch_resnet_mapping(
    model: keras.Model, head: str = "fc"
) -> dict[str, list[tuple[keras.Variable, str, Callable[[np.ndarray], np.ndarray]]]]:
    """Where each weight of a tfsd ResNet comes from in a torchvision state dict.

    Returns ``{tfsd layer name: [(variable, torch key, transform), ...]}``, where ``transform``
    maps the torch array to the Keras layout. The normalization layer is not listed (it holds the
    source's preprocessing, not a tensor of the state dict).

    Raises:
      ValueError: a weight-carrying layer of ``model`` has no torchvision counterpart (the model
        is not a tfsd ResNet).
    """
    mapping = {}
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Normalization):
            continue
        prefix = _torch_prefix(layer.name, head)
        if prefix is None:
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}) of model {model.name!r} has no "
                f"torchvision ResNet counterpart; load_torch_resnet_weights handles the tfsd "
                f"ResNets (tfsd.models.resnet) only."
            )
        entries = []
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in _own_variables(layer):
                entries.append((v, f"{prefix}.{_BN_TENSORS[v.name]}", np.asarray))
        elif isinstance(layer, keras.layers.Conv2D):
            entries.append((layer.kernel, f"{prefix}.weight", _conv_kernel))
        elif isinstance(layer, keras.layers.Dense):
            entries.append((layer.kernel, f"{prefix}.weight", np.transpose))
            entries.append((layer.bias, f"{prefix}.bias", np.asarray))
        else:
            raise ValueError(f"Layer {layer.name!r}: unexpected {type(layer).__name__}.")
        mapping[layer.name] = entries
    return mapping


def _read_state_dict(source: str | os.PathLike | Mapping[str, np.ndarray]) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return {k: np.asarray(v) for k, v in source.items()}, "the state dict"
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"source must be the path of a .safetensors file or a dict of NumPy arrays, got "
            f"{type(source).__name__}."
        )
    path = os.path.expanduser(os.fspath(source))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No state dict file at {path!r}.")
    if path.endswith((".pth", ".pt", ".bin", ".ckpt")):
        raise ValueError(
            f"{path!r} looks like a pickled torch checkpoint; convert it once where torch is "
            f"installed: safetensors.torch.save_file(torch.load(path, weights_only=True), "
            "'model.safetensors') (weights_only=True: tensors only, no pickled code runs)."
        )
    try:
        return load_file(path), f"{path!r}"
    except (SafetensorError, TypeError, ValueError) as e:  # not safetensors, or bf16 (no NumPy)
        raise ValueError(f"Cannot read {path!r} as a safetensors state dict: {e}") from e


def load_torch_resnet_weights(
    model: keras.Model,
    source: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    mean: Sequence[float] = common.IMAGENET_MEAN,
    std: Sequence[float] = common.IMAGENET_STD,
    source_bn_epsilon: float = TORCH_BN_EPSILON,
    skip_layers: Sequence[str] = (),
) -> list[str]:
    """Copies a torchvision / timm ResNet state dict into a tfsd ResNet.

    After the import, ``model(images, training=False)`` on [0, 255] images equals the PyTorch
    model's ``eval()`` output on ``Normalize(mean, std)(images / 255)`` (NCHW), up to float
    rounding (docs/models.md, "Reference: tfsd/models/import_torch.py": mapping, layouts,
    BatchNorm eps, normalisation, SD scaling).

    Example:
      >>> model = create_model("resnet50", num_classes=10, survival_prob=0.8)
      >>> load_torch_resnet_weights(model, "resnet50.safetensors", skip_layers=["predictions"])

    Args:
      model: a tfsd ResNet (`tfsd.models.resnet`) of the source's architecture; with
        ``include_top=False`` the source's head is ignored.
      source: a ``.safetensors`` file of the state dict, or the state dict as NumPy arrays.
      mean, std: the source's input normalisation of [0, 1] images (ImageNet's by default,
        as torchvision's weights were trained with).
      source_bn_epsilon: the source's BatchNorm eps (PyTorch's default 1e-5).
      skip_layers: tfsd layer names to leave as initialised, e.g. ``["predictions"]`` for a new
        head when the class counts differ (their source tensors are then ignored).

    Returns:
      The names of the tfsd layers that received weights (``normalization`` included).

    Raises:
      FileNotFoundError: ``source`` is a path that does not exist.
      ValueError: the file is not a safetensors state dict; a tensor is missing, unused or of
        another shape (the message names the torch key and the tfsd variable). Nothing is
        assigned unless every check passes.
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"model must be a keras.Model, got {type(model).__name__}.")
    state, where = _read_state_dict(source)
    heads = [h for h in _HEADS if f"{h}.weight" in state]
    mapping = torch_resnet_mapping(model, head=heads[0] if heads else "fc")
    unknown = set(skip_layers) - set(mapping)
    if unknown:
        raise ValueError(f"skip_layers {sorted(unknown)} are not weight-carrying layers of model.")

    # Check everything before assigning anything, so a failed import leaves the model unchanged.
    plan, used = [], set()
    for layer_name, entries in mapping.items():
        skipped = layer_name in skip_layers
        for variable, key, transform in entries:
            used.add(key)
            if skipped:
                continue
            if key not in state:
                raise ValueError(
                    f"{where} has no tensor {key!r} for {variable.path!r} of model {model.name!r}"
                    f" (shape {tuple(variable.shape)}). Pass skip_layers=[{layer_name!r}] to keep "
                    f"its initial weights."
                )
            array = np.asarray(transform(state[key]), dtype="float64")
            if array.shape != tuple(variable.shape):
                hint = " Pass skip_layers=['predictions'] for a new head." * (
                    layer_name == "predictions"
                )
                raise ValueError(
                    f"Tensor {key!r} of {where} has shape {tuple(state[key].shape)}, "
                    f"{array.shape} in Keras layout, but {variable.path!r} of model "
                    f"{model.name!r} has shape {tuple(variable.shape)}.{hint}"
                )
            if variable.name == "moving_variance":
                # Keep var + eps: the normalised activations do not change.
                layer_eps = _owner_epsilon(model, layer_name)
                array = array + source_bn_epsilon - layer_eps
                if np.any(array < 0):
                    raise ValueError(
                        f"{key!r}: running_var + {source_bn_epsilon} − {layer_eps} (the model's "
                        f"BatchNorm epsilon) is negative; build the model with "
                        f"bn_epsilon={source_bn_epsilon}."
                    )
            plan.append((variable, array))
    has_head = "predictions" in mapping
    unused = sorted(
        k
        for k in state
        if k not in used
        and not k.endswith(".num_batches_tracked")  # a training counter, no Keras counterpart
        and not (not has_head and k.split(".")[0] in _HEADS)
    )
    if unused:
        raise ValueError(
            f"{where} has tensors model {model.name!r} has no counterpart for: {unused[:8]}"
            f"{' …' if len(unused) > 8 else ''}. Is it the same architecture (depth, block type, "
            f"plain torchvision stem and shortcuts)?"
        )

    _check_vector(mean, "mean", model)
    _check_vector(std, "std", model)
    # torchvision computes (x / 255 − mean) / std outside the model, tfsd inside: same first-conv
    # input from [0, 255] images.
    chain_source = _Source(f"torch normalisation mean={tuple(mean)}, std={tuple(std)}")
    chain_source.input_chain = [
        ("rescale", np.asarray(1.0 / 255.0), 0.0),
        ("normalize", np.asarray(mean, "float64"), np.square(np.asarray(std, "float64"))),
    ]
    _fold_normalization(model, chain_source)
    for variable, array in plan:
        variable.assign(array.astype(variable.dtype))
    # PyTorch models (timm drop_path included) are identity at inference: fold 1/p where the
    # tfsd model scales the branch by p at inference.
    match_inverted_scaling(model)
    for attr in ("predict_function", "test_function", "train_function"):
        if hasattr(model, attr):
            setattr(model, attr, None)  # compiled functions hold the old normalisation constants
    return ["normalization"] + [n for n in mapping if n not in skip_layers]


def _owner_epsilon(model: keras.Model, layer_name: str) -> float:
    for layer in _leaf_layers(model):
        if layer.name == layer_name:
            return float(layer.epsilon)
    raise AssertionError(layer_name)  # the mapping came from the same walk


def _check_vector(values: Sequence[float], name: str, model: keras.Model) -> None:
    channels = model.inputs[0].shape[-1]
    array = np.asarray(values, "float64")
    if array.shape != (channels,) or not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must hold {channels} finite numbers, got {values!r}.")
    if name == "std" and np.any(array <= 0):
        raise ValueError(f"std must be positive, got {values!r}.")
