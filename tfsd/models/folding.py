"""Folding factors into weights: stochastic depth into an inference model, for export.

One home for the folding primitives (walking back from a tensor to the affine layer that makes
it, scaling that layer's output through its parameters) and the two folds built on them:

* `fold_stochastic_depth`: with the paper's scaling (``scale_at="inference"``) an inference block
  computes ``shortcut + p * branch(x)``. Since the branch ends in an affine op (BatchNormalization,
  or a Dense/Conv with bias), ``p * branch(x)`` equals the same branch with that op's scale and
  shift multiplied by p. `fold_stochastic_depth` returns a copy of a model in which every block's
  p is folded that way and every stochastic-depth layer is replaced by plain Keras: its branch
  (the same sub-model, with copied weights) and a ``keras.layers.Add``. The served graph has no
  stochastic-depth op, no random op and no extra multiply, and loading or re-exporting the folded
  model needs no tfsd custom object (as in TF Serving exports of the EfficientNet reference,
  where inverted scaling gives the same property).
* `match_inverted_scaling`: the importers' step (`tfsd.models.import_keras`,
  `tfsd.models.import_torch`): weights trained with inverted scaling (identity at inference)
  loaded into a ``scale_at="inference"`` model get 1/p folded into each branch.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np

from tfsd import layers as sd_layers
from tfsd.models.common import POOLING, ReplicaDropout
from tfsd.models.shortcuts import ChannelZeroPad

# -------------------------------------------------------------------------------------------------
# Folding a factor into a residual branch.
# -------------------------------------------------------------------------------------------------

# Layers whose output scales with their input: f(c·x) = c·f(x) for c > 0.
_SCALE_EQUIVARIANT = (
    keras.layers.Identity,
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.SpatialDropout3D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.ZeroPadding3D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.Cropping3D,
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Permute,
    *POOLING,
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.GlobalAveragePooling3D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.GlobalMaxPooling3D,
)
# Layers computing ``activation(x @ kernel + bias)``; linear in (kernel, bias) when the
# activation is linear. SeparableConv's last linear map is its pointwise kernel.
_KERNEL_LAYERS = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


def _is_linear(activation: Any) -> bool:
    return activation is None or getattr(activation, "__name__", "") == "linear"


def tensor_producer(tensor: Any, where: str) -> keras.layers.Layer:
    """The layer whose output ``tensor`` is up to a positive scale.

    Walks back from a symbolic tensor through layers that commute with a positive scale
    (dropout, padding, pooling, reshape…) and into the outputs of nested sub-models.

    Raises:
      ValueError: the tensor is a model input, or a sub-model on the way has several outputs.
    """
    return producer_path(tensor, where)[0]


def producer_path(
    tensor: Any, where: str, container: keras.Model | None = None
) -> tuple[keras.layers.Layer, list[tuple[Any, keras.Model | None]]]:
    """`tensor_producer` and the symbolic tensors walked to reach it.

    Returns ``(producer, path)``: ``path`` lists ``(tensor, model)`` pairs from ``tensor`` back to
    the producer's output, each with the functional model whose graph holds it (``container`` for
    the first; the sub-model for tensors inside one), so callers can check that scaling the
    producer changes nothing but ``tensor`` (`tensor_consumers`).
    """
    path = [(tensor, container)]
    op, node_index, _ = tensor._keras_history
    while True:
        while isinstance(op, _SCALE_EQUIVARIANT):
            node = op._inbound_nodes[node_index]
            if len(node.input_tensors) != 1:
                break
            path.append((node.input_tensors[0], container))
            op, node_index, _ = node.input_tensors[0]._keras_history
        if isinstance(op, keras.Model):
            container = op
            inner = _single_output(op, where)
            path.append((inner, container))
            op, node_index, _ = inner._keras_history
            continue
        if isinstance(op, keras.layers.InputLayer):
            raise ValueError(f"{where}: the branch output is its input; nothing to scale.")
        return op, path


def tensor_consumers(tensor: Any, model: keras.Model | None) -> int:
    """How many times a symbolic tensor is used: as a layer input, or as an output of ``model``.

    Counts the nodes (layer calls) of the tensor's producer that take ``tensor`` as an input —
    Keras 3 records them in ``Operation._outbound_nodes`` (keras/src/ops/operation.py,
    keras/src/ops/node.py) — plus one if ``tensor`` is one of ``model.outputs``.
    """
    op = tensor._keras_history[0]
    uses = sum(
        any(t is tensor for t in node.input_tensors) for node in getattr(op, "_outbound_nodes", [])
    )
    outputs = getattr(model, "outputs", None) or []
    return uses + sum(o is tensor for o in outputs)


def _single_output(model: keras.Model, where: str) -> Any:
    outputs = getattr(model, "outputs", None)
    if not outputs or len(outputs) != 1:
        raise ValueError(f"{where}: sub-model {model.name!r} must have a single output.")
    return outputs[0]


def _output_producer(layer: keras.layers.Layer, where: str) -> keras.layers.Layer:
    """The layer computing ``layer``'s output, looking through sub-models and equivariant ops."""
    if isinstance(layer, keras.Model):
        return tensor_producer(_single_output(layer, where), where)
    return layer


def scale_branch_output(residual_layer: sd_layers.StochasticResidual, factor: float):
    """Multiplies the output of a `StochasticResidual`'s branch by ``factor``, in its weights.

    Finds the last affine layer of the branch (walking back from the branch output through
    nested sub-models and layers that commute with a positive scale: dropout, padding, pooling,
    reshape…) and scales its parameters:

    * ``BatchNormalization``: gamma and beta (its output is ``gamma · x̂ + beta``);
    * ``Dense``, ``Conv*``, ``DepthwiseConv*``, ``Conv*Transpose``: kernel and bias (the
      pointwise kernel for ``SeparableConv*``); the layer's activation must be linear.

    Used to move a stochastic-depth scale between conventions: a ``scale_at="inference"`` layer
    computes ``shortcut + p · branch`` at inference, so ``scale_branch_output(layer, 1 / p)``
    makes it output what an inverted-scaling (``scale_at="train"``) model with the original
    weights outputs, and ``factor = p`` folds the inference scale into the weights.

    Args:
      residual_layer: a built `tfsd.layers.StochasticResidual`.
      factor: a positive, finite multiplier.

    Returns:
      The layer whose weights were scaled.

    Raises:
      ValueError: no scalable affine layer ends the branch (e.g. a non-linear activation, a
        BatchNormalization with ``scale=False``, or a layer reused elsewhere in the branch).
    """
    if not isinstance(residual_layer, sd_layers.StochasticResidual):
        raise ValueError(
            f"scale_branch_output needs a StochasticResidual, got {type(residual_layer).__name__}."
        )
    where = f"scale_branch_output({residual_layer.name!r})"
    return scale_layer_output(_output_producer(residual_layer.branch, where), factor, where)


def _check_factor(factor: Any) -> None:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise ValueError(f"factor must be a positive finite number, got {factor!r}.")
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"factor must be a positive finite number, got {factor!r}.")


def scale_layer_output(
    layer: keras.layers.Layer, factor: float, where: str = ""
) -> keras.layers.Layer:
    """Multiplies the output of one affine ``layer`` by ``factor`` through its parameters.

    ``BatchNormalization``: gamma and beta; ``Dense``/``Conv*``/``DepthwiseConv*``/
    ``Conv*Transpose``: kernel and bias (the pointwise kernel of ``SeparableConv*``), whose
    activation must be linear. ``where`` prefixes error messages.

    Raises:
      ValueError: the layer is not affine in its parameters, is called more than once (its other
        uses would change too), or is quantized or has LoRA.
    """
    where = where or f"scale_layer_output({layer.name!r})"
    _check_factor(factor)
    if len(getattr(layer, "_inbound_nodes", ())) > 1:
        raise ValueError(f"{where}: {layer.name!r} is called more than once; scaling it is unsafe.")
    if getattr(layer, "quantization_mode", None) or getattr(layer, "lora_enabled", False):
        raise ValueError(f"{where}: {layer.name!r} is quantized or has LoRA; cannot scale it.")

    if isinstance(layer, keras.layers.BatchNormalization):
        if not layer.scale:
            raise ValueError(
                f"{where}: BatchNormalization {layer.name!r} has no gamma (scale=False)."
            )
        variables = [layer.gamma] + ([layer.beta] if layer.center else [])
    elif isinstance(layer, _KERNEL_LAYERS):
        if not _is_linear(getattr(layer, "activation", None)):
            raise ValueError(
                f"{where}: {layer.name!r} ends with a non-linear activation; cannot scale it."
            )
        is_separable = isinstance(
            layer, (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
        )
        kernel = layer.pointwise_kernel if is_separable else layer.kernel
        variables = [kernel] + ([layer.bias] if getattr(layer, "bias", None) is not None else [])
    else:
        raise ValueError(
            f"{where}: the output comes from {type(layer).__name__} {layer.name!r}; expected a "
            f"BatchNormalization, Dense or convolution layer."
        )
    for v in variables:
        v.assign(np.asarray(v) * np.asarray(factor, dtype=v.dtype))
    return layer


def match_inverted_scaling(model: keras.Model) -> list[str]:
    """Makes a ``scale_at="inference"`` model output what inverted scaling gives, in its weights.

    Weights trained with inverted scaling (keras.applications, timm, torchvision: identity at
    inference) compute ``shortcut + branch`` at inference; a tfsd block with
    ``scale_at="inference"`` computes ``shortcut + p · branch``. Multiplying each such block's
    branch output by 1/p (`scale_branch_output`) makes the two equal. Layers with
    ``scale_at="train"`` or p = 1 are left alone.

    Returns:
      The names of the stochastic-depth layers whose branches were rescaled.

    Raises:
      ValueError: a layer scaling at inference is not a `StochasticResidual` (no branch to fold
        into), or its branch does not end in a scalable affine layer.
    """
    done = []
    for layer in sd_layers.stochastic_depth_layers(model):
        if layer.scale_at != "inference" or layer.survival_prob == 1.0:
            continue
        if not isinstance(layer, sd_layers.StochasticResidual):
            raise ValueError(
                f"{layer.name!r} scales at inference and is not a StochasticResidual; cannot fold "
                f"1/p into its branch."
            )
        scale_branch_output(layer, 1.0 / layer.survival_prob)
        done.append(layer.name)
    return done


# -------------------------------------------------------------------------------------------------
# Folding stochastic depth for export.
# -------------------------------------------------------------------------------------------------


def refresh_normalization(model: keras.Model) -> None:
    """Makes every ``Normalization`` layer of ``model`` use the mean/variance its weights hold.

    Keras' Normalization copies its ``mean``/``variance`` variables into constants in
    ``finalize_state()`` (keras/src/layers/preprocessing/normalization.py) and ``call()`` uses
    the constants. Anything that assigns the variables — checkpoint restore, ``set_weights``,
    the EMA's assign and swap, the importers — must call this afterwards, or the model keeps
    normalising with the statistics it was built with. Compiled ``predict``/``test``/``train``
    functions captured the old constants, so they are dropped too.
    """
    for layer in model._flatten_layers(include_self=True):  # noqa: SLF001
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()
    for attr in ("predict_function", "test_function", "train_function"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)


def _fold_into_producer(tensor, container: keras.Model, factor: float, where: str) -> None:
    """Multiplies ``tensor`` by ``factor`` through the weights of the affine layer producing it.

    Refuses (``ValueError``) when the producer's output, or any tensor between it and ``tensor``,
    is also used elsewhere: scaling the producer would silently change those other uses.
    """
    producer, path = producer_path(tensor, where, container)
    shared_layer = len(producer._inbound_nodes) > 1  # scale_layer_output refuses it below
    for t, model in [] if shared_layer else path:
        if tensor_consumers(t, model) > 1:
            users = [n.operation.name for n in t._keras_history[0]._outbound_nodes]
            raise ValueError(
                f"{where}: the residual comes from {producer.name!r}, whose output also feeds "
                f"other layers or model outputs ({', '.join(users)}); folding the factor into "
                f"{producer.name!r} would change them too. Export without folding "
                "(fold=False), or give the residual its own affine layer."
            )
    scale_layer_output(producer, factor, where)


def fold_stochastic_depth(model: keras.Model) -> keras.Model:
    """Returns a plain-Keras inference copy of ``model`` with every survival factor folded.

    * `StochasticResidual` ``layer(x, shortcut=s)``: becomes ``Add(name=layer.name)([s,
      branch(x)])`` with a copy of its branch; with ``scale_at="inference"`` p is first folded into
      the last affine op of the branch (BatchNormalization gamma and beta, or a Dense/Conv kernel
      and bias, looking through dropout, padding, pooling and reshapes).
    * `StochasticDepth` (the ``[shortcut, residual]`` form): becomes ``Add(name=layer.name)``,
      with p folded into the layer that produced the residual (found the same way).
    * With ``scale_at="train"`` (inverted scaling) inference is already the plain sum: nothing is
      scaled.
    * `tfsd.models.resnet.ChannelZeroPad` (CIFAR ResNet shortcuts): becomes stock Keras reshape and
      zero-padding layers, and `tfsd.models.common.ReplicaDropout` Keras' ``Dropout``, so the
      folded model holds no tfsd class at all.

    The input model is not modified. Outputs of the folded model equal ``model(x,
    training=False)`` up to float rounding (tested within 1e-5), it holds no tfsd layer, and its
    graph has as many multiplies as the same architecture built without stochastic depth.

    Args:
      model: a functional Keras model.

    Returns:
      A new functional model with the same layer names (each stochastic-depth layer's name now
      names its ``Add``; branch sub-models keep theirs).

    Raises:
      ValueError: a block's residual does not end in a foldable affine op, or that op's output
        is also used by another layer or output (folding would change that use too).
      NotImplementedError: for stochastic-depth layers nested inside a sub-model (the builders in
        this package never create them).
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise ValueError("fold_stochastic_depth needs a functional keras.Model.")
    top = {layer.name: layer for layer in model.layers}
    for layer in sd_layers.stochastic_depth_layers(model):
        if layer.name not in top:
            raise NotImplementedError(
                f"Stochastic-depth layer {layer.name!r} is nested inside a sub-model; folding "
                "handles layers at the top level of the model only."
            )

    # (original layer, its copy) for every weight-carrying copy; weights are copied after the
    # graph is rebuilt (Keras builds a cloned layer when it is first called).
    copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, sd_layers.StochasticResidual):
            branch = keras.models.clone_model(layer.branch)
            copies.append((layer.branch, branch))
            return _Replaced(layer, branch)
        if isinstance(layer, (sd_layers.StochasticDepth, ChannelZeroPad)):
            return _Replaced(layer, None)
        # ReplicaDropout is Keras' Dropout with the replica id in its training seed: the same
        # config, and the identity at inference, so the folded model keeps no tfsd class.
        cls = keras.layers.Dropout if isinstance(layer, ReplicaDropout) else layer.__class__
        new = cls.from_config(layer.get_config())
        copies.append((layer, new))
        return new

    def call(layer, *args, **kwargs):
        # keras.models.clone_model's call_function (keras/src/models/cloning.py): lets one
        # stochastic-depth layer become several plain layers in the rebuilt graph.
        if not isinstance(layer, _Replaced):
            return layer(*args, **kwargs)
        kwargs.pop("training", None)
        if isinstance(layer.original, ChannelZeroPad):
            return _plain_channel_pad(layer.original, args[0])
        add = keras.layers.Add(name=layer.original.name, dtype=layer.original.dtype_policy)
        if layer.branch is None:
            return add(list(args[0]))
        x = args[0]
        shortcut = kwargs.get("shortcut")
        return add([x if shortcut is None else shortcut, layer.branch(x)])

    folded = keras.models.clone_model(model, clone_function=clone, call_function=call)
    for original, new in copies:
        new.set_weights(original.get_weights())
    refresh_normalization(folded)

    for layer in model.layers:
        if not isinstance(layer, sd_layers.StochasticDepth) or layer.scale_at != "inference":
            continue
        if layer.survival_prob == 1.0:
            continue
        where = f"cannot fold the survival factor of {layer.name!r}"
        add = folded.get_layer(layer.name)
        residual = add._inbound_nodes[0].input_tensors[1]
        _fold_into_producer(residual, folded, layer.survival_prob, where)
    leftover = sd_layers.stochastic_depth_layers(folded)
    leftover += [x for x in folded._flatten_layers() if isinstance(x, ChannelZeroPad)]
    if leftover:  # a guard on this function itself: nothing of tfsd may reach an export.
        raise AssertionError(f"fold left tfsd layers: {[x.name for x in leftover]}")
    return folded


def _plain_channel_pad(layer: ChannelZeroPad, x):
    """`ChannelZeroPad` (the CIFAR ResNets' parameter-free shortcut) in stock Keras layers.

    Appending zero channels to ``[B, H, W, C]`` is ZeroPadding3D on the last spatial axis of the
    free reshape ``[B, H, W, C, 1]``; with an unknown H or W, a transpose pair around ZeroPadding2D
    instead. Neither multiplies anything.
    """
    height, width, channels = x.shape[1:]
    before, after = layer.split(channels)  # the layer's placement of the zeros
    name = layer.name
    if before == after == 0:
        return keras.layers.Identity(name=name)(x)
    if height is not None and width is not None:
        y = keras.layers.Reshape((height, width, channels, 1), name=f"{name}_expand")(x)
        y = keras.layers.ZeroPadding3D(((0, 0), (0, 0), (before, after)), name=f"{name}_pad")(y)
        return keras.layers.Reshape((height, width, layer.channels), name=name)(y)
    y = keras.layers.Permute((3, 1, 2), name=f"{name}_to_cfirst")(x)
    y = keras.layers.ZeroPadding2D(((before, after), (0, 0)), name=f"{name}_pad")(y)
    return keras.layers.Permute((2, 3, 1), name=name)(y)


class _Replaced(keras.layers.Layer):
    """Stands in for a tfsd layer during cloning; never called or built."""

    def __init__(self, original: keras.layers.Layer, branch: keras.layers.Layer | None):
        super().__init__(name=f"{original.name}_replaced")
        self.original, self.branch = original, branch
