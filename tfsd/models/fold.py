"""Folding stochastic depth into the weights of an inference model, for export.

With the paper's scaling (``scale_at="inference"``) an inference block computes
``shortcut + p * branch(x)``. Since the branch ends in an affine op (BatchNormalization, or a
Dense/Conv with bias), ``p * branch(x)`` equals the same branch with that op's scale and shift
multiplied by p. `fold_stochastic_depth` returns a copy of a model in which every block's p is
folded that way and every stochastic-depth layer computes a plain ``shortcut + branch(x)``: the
served graph has no stochastic-depth op and no extra multiply (as in TF Serving exports of the
EfficientNet reference, where inverted scaling gives the same property).
"""

from __future__ import annotations

import keras

from tfsd import layers as sd_layers
from tfsd.models.weights import scale_branch_output, scale_layer_output, tensor_producer


def _refresh_normalization(model: keras.Model) -> None:
    # keras' Normalization snapshots its adapted mean/variance as constants in finalize_state();
    # after set_weights() they must be re-snapshotted or the old statistics stay in use.
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Normalization):
            layer.finalize_state()


def _is_pair_form(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, sd_layers.StochasticDepth) and not isinstance(
        layer, sd_layers.StochasticResidual
    )


def fold_stochastic_depth(model: keras.Model) -> keras.Model:
    """Returns an inference copy of ``model`` with every survival factor folded into weights.

    * `StochasticResidual` with ``scale_at="inference"``: p is folded into the last affine op of
      its branch (BatchNormalization gamma and beta, or a Dense/Conv kernel and bias), and the
      layer is rebuilt with ``survival_prob=1.0`` (an exact ``shortcut + branch(x)``).
    * `StochasticResidual` with ``scale_at="train"``: inference is already the plain sum; the layer
      is rebuilt with ``survival_prob=1.0``.
    * `StochasticDepth` (the ``[shortcut, residual]`` form): replaced by ``keras.layers.Add``
      with p folded into the layer that produced the residual (looking through dropout, padding,
      pooling and reshapes, as for branches).

    The input model is not modified. Outputs of the folded model equal ``model(x,
    training=False)`` up to float rounding (tested within 1e-5).

    Args:
      model: a functional Keras model.

    Returns:
      A new functional model with the same layer names and no stochastic-depth randomness.

    Raises:
      ValueError: if a block's branch does not end in a foldable affine op.
      NotImplementedError: for stochastic-depth layers nested inside a sub-model's branch (the
        builders in this package never create them).
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

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        if isinstance(layer, sd_layers.StochasticResidual):
            config = layer.get_config()
            config["survival_prob"] = 1.0
            return sd_layers.StochasticResidual.from_config(config)
        if _is_pair_form(layer):
            return keras.layers.Add(name=layer.name, dtype=layer.dtype_policy)
        return layer.__class__.from_config(layer.get_config())

    folded = keras.models.clone_model(model, clone_function=clone)
    # Weights in model order, minus the step/keep-rate state of replaced pair layers.
    dropped = {id(v) for lay in model.layers if _is_pair_form(lay) for v in lay.weights}
    folded.set_weights([v.numpy() for v in model.weights if id(v) not in dropped])
    _refresh_normalization(folded)

    for layer in model.layers:
        if not isinstance(layer, sd_layers.StochasticDepth) or layer.scale_at != "inference":
            continue
        if layer.survival_prob == 1.0:
            continue
        if isinstance(layer, sd_layers.StochasticResidual):
            scale_branch_output(folded.get_layer(layer.name), layer.survival_prob)
        else:
            # The Add that replaced the pair layer: fold p into what produced its residual input.
            where = f"cannot fold the survival factor of {layer.name!r}"
            residual = folded.get_layer(layer.name)._inbound_nodes[0].input_tensors[1]
            scale_layer_output(tensor_producer(residual, where), layer.survival_prob, where)
    return folded
