"""Folding stochastic depth into the weights of an inference model, for export.

With the paper's scaling (``scale_at="inference"``) an inference block computes
``shortcut + p * branch(x)``. Since the branch ends in an affine op (BatchNormalization, or a
Dense/Conv with bias), ``p * branch(x)`` equals the same branch with that op's scale and shift
multiplied by p. `fold_stochastic_depth` returns a copy of a model in which every block's p is
folded that way and every stochastic-depth layer is replaced by plain Keras: its branch (the same
sub-model, with copied weights) and a ``keras.layers.Add``. The served graph has no
stochastic-depth op, no random op and no extra multiply, and loading or re-exporting the folded
model needs no tfsd custom object (as in TF Serving exports of the EfficientNet reference, where
inverted scaling gives the same property).
"""

from __future__ import annotations

import keras

from tfsd import layers as sd_layers
from tfsd.models.resnet import ChannelZeroPad
from tfsd.models.weights import producer_path, scale_layer_output, tensor_consumers


def _refresh_normalization(model: keras.Model) -> None:
    # keras' Normalization snapshots its adapted mean/variance as constants in finalize_state();
    # after set_weights() they must be re-snapshotted or the old statistics stay in use.
    for layer in model._flatten_layers(include_self=True):
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()


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
      zero-padding layers, so the folded model holds no tfsd class at all.

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
        new = layer.__class__.from_config(layer.get_config())
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
    _refresh_normalization(folded)

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
    pad = layer.channels - channels
    name = layer.name
    if pad == 0:
        return keras.layers.Identity(name=name)(x)
    if height is not None and width is not None:
        y = keras.layers.Reshape((height, width, channels, 1), name=f"{name}_expand")(x)
        y = keras.layers.ZeroPadding3D(((0, 0), (0, 0), (0, pad)), name=f"{name}_pad")(y)
        return keras.layers.Reshape((height, width, layer.channels), name=name)(y)
    y = keras.layers.Permute((3, 1, 2), name=f"{name}_to_cfirst")(x)
    y = keras.layers.ZeroPadding2D(((0, pad), (0, 0)), name=f"{name}_pad")(y)
    return keras.layers.Permute((2, 3, 1), name=name)(y)


class _Replaced(keras.layers.Layer):
    """Stands in for a tfsd layer during cloning; never called or built."""

    def __init__(self, original: keras.layers.Layer, branch: keras.layers.Layer | None):
        super().__init__(name=f"{original.name}_replaced")
        self.original, self.branch = original, branch
