"""`load_pretrained`: one entry point for every pretrained-weight file tfsd imports.

It dispatches on the file (keras.applications ``.h5`` / ``.weights.h5`` / a Keras model,
``.safetensors``, PyTorch ``.pth`` / ``.pt`` / ``.bin`` / ``.ckpt``) and on the model family (a
tfsd ResNet has ``conv1_conv``, a tfsd EfficientNet ``stem_conv``) to the importers, which stay
usable on their own: `load_keras_applications_weights`, `load_torch_resnet_weights`,
`load_torch_efficientnet_weights`. ``--config.init.from=PATH`` of ``tfsd.train`` calls it for
every file (tfsd.training.finetune). docs/import_matrix.md lists what maps and its tests.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import keras
import numpy as np

from tfsd.models import import_torch_efficientnet as torch_effnet
from tfsd.models.import_keras import load_keras_applications_weights
from tfsd.models.import_torch import TORCH_SUFFIXES, load_torch_resnet_weights, read_state_dict

KERAS_SUFFIXES = (".h5", ".keras")
STATE_DICT_SUFFIXES = (".safetensors", *TORCH_SUFFIXES)


def model_family(model: keras.Model) -> str:
    """ "resnet" or "efficientnet", from the layer names the tfsd builders give."""
    names = {lay.name for lay in model.layers}
    if "stem_conv" in names:
        return "efficientnet"
    if "conv1_conv" in names:
        return "resnet"
    raise ValueError(
        f"Model {model.name!r} is neither a tfsd ResNet (conv1_conv) nor a tfsd EfficientNet "
        f"(stem_conv): load_pretrained imports into those families only."
    )


def guess_efficientnet_arch(model: keras.Model, state: Mapping[str, np.ndarray]) -> str:
    """The lukemelas architecture of a state dict for ``model`` (timm needs ``arch=``).

    lukemelas names its tensors ``_conv_stem`` … (timm ``conv_stem``); B-models have SE
    tensors, Lite ones none; the variant number comes from the model's name.
    """
    if "_conv_stem.weight" not in state:
        raise ValueError(
            "A timm (or unknown) EfficientNet state dict: timm's tf_ ports and native models "
            "differ in padding and BatchNorm eps, which the tensors do not show; pass "
            f"arch=… (one of {torch_effnet.ARCHITECTURES}; --config.init.arch=…)."
        )
    lite = not any(k.startswith("_blocks.0._se_reduce") for k in state)
    family = "lite" if lite else "b"
    name = model.name
    index = name.rsplit(family, 1)[-1] if name.startswith(f"efficientnet_{family}") else ""
    if not index.isdigit():
        raise ValueError(
            f"Cannot tell which lukemelas EfficientNet fits model {name!r} (the state dict is an "
            f"EfficientNet-{'Lite' if lite else 'B'}); pass arch='efficientnet-{family}N'."
        )
    return f"efficientnet-{family}{index}"


def load_pretrained(
    model: keras.Model, path: str | os.PathLike | keras.Model | Mapping, **source_options: Any
) -> list[str]:
    """Loads pretrained weights into a tfsd ResNet or EfficientNet, whatever the file.

    Dispatch:
      * ``.h5`` / ``.weights.h5`` / ``.keras`` (not tfsd's) or a ``keras.Model``:
        keras.applications EfficientNet weights (`load_keras_applications_weights`; options
        ``imagenet_rescaling``, ``skip_layers``).
      * ``.safetensors``, ``.pth``, ``.pt``, ``.bin``, ``.ckpt`` or a dict of arrays: a PyTorch
        state dict, read without torch or pickle (`tfsd.models.torch_file`), into a ResNet
        (`load_torch_resnet_weights`: torchvision / timm / akamaster naming) or an
        EfficientNet (`load_torch_efficientnet_weights`: lukemelas or timm naming; ``arch=``,
        guessed for lukemelas from the model's name). Options: ``mean``, ``std``,
        ``source_bn_epsilon``, ``skip_layers``, ``key`` (a training checkpoint's entry).

    Returns:
      The names of the layers that received weights.

    Raises:
      FileNotFoundError: no such file. ValueError: an unknown file type, a model of another
      family, or whatever the importer refuses (nothing is assigned then).
    """
    if isinstance(path, keras.Model):
        return load_keras_applications_weights(model, path, **source_options)
    if isinstance(path, Mapping):
        state, where = dict(path), None
    else:
        path = os.path.expanduser(os.fspath(path))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No weights file at {path!r}.")
        if path.endswith(KERAS_SUFFIXES):
            if path.endswith(".keras"):
                path = keras.saving.load_model(path, compile=False)
            return load_keras_applications_weights(model, path, **source_options)
        if not path.endswith(STATE_DICT_SUFFIXES):
            raise ValueError(
                f"{path!r}: unknown weights file type; expected one of "
                f"{KERAS_SUFFIXES + STATE_DICT_SUFFIXES} (docs/import_matrix.md)."
            )
        state, where = None, path
    family = model_family(model)
    key = source_options.pop("key", None)
    if state is None:
        state, _ = read_state_dict(where, key=key)
    if family == "resnet":
        return load_torch_resnet_weights(model, state, **source_options)
    arch = source_options.pop("arch", None) or guess_efficientnet_arch(model, state)
    return torch_effnet.load_torch_efficientnet_weights(model, state, arch=arch, **source_options)
