"""fold_stochastic_depth: folded inference models equal the originals and carry no SD ops."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsd.models  # noqa: F401  (registration)
from tests.helpers import op_types
from tfsd import layers as sdl
from tfsd.models import create_model, fold_stochastic_depth


def _randomize_bn(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in (layer.gamma, layer.beta, layer.moving_mean):
                v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))


def _mul_count(model, shape):
    graph = (
        tf.function(lambda x: model(x, training=False))
        .get_concrete_function(tf.TensorSpec(shape))
        .graph.as_graph_def()
    )
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(n.op == "Mul" for n in nodes)


@pytest.mark.parametrize(
    "name,kwargs,shape",
    [
        ("cifar_resnet20", dict(width=0.5), (2, 16, 16, 3)),
        ("resnet18", dict(width=0.25), (2, 32, 32, 3)),
        ("efficientnet_b0", dict(width=0.25, depth=0.34, sd_scale_at="inference"), (2, 32, 32, 3)),
    ],
)
def test_fold_matches_inference_and_removes_scaling(name, kwargs, shape):
    model = create_model(name, num_classes=7, input_shape=shape[1:], survival_prob=0.5, **kwargs)
    _randomize_bn(model)
    x = tf.random.stateless_uniform(shape, seed=[1, 2], maxval=255.0)
    folded = fold_stochastic_depth(model)
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), atol=1e-5, rtol=1e-5)
    assert all(lay.survival_prob == 1.0 for lay in sdl.stochastic_depth_layers(folded))
    assert not any("Random" in t for t in op_types(lambda t: folded(t), tf.TensorSpec(shape)))
    scaled = [lay for lay in sdl.stochastic_depth_layers(model) if lay.scale_at == "inference"]
    assert scaled  # the test can fail: there were multiplies to remove
    assert _mul_count(folded, shape) == _mul_count(model, shape) - len(scaled)
    # The input model is untouched.
    assert all(lay.survival_prob < 1.0 for lay in sdl.stochastic_depth_layers(model))


def test_fold_pair_form_replaces_layer_with_add():
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="d1")(inp)
    r = keras.layers.Dense(6, name="res")(h)
    out = sdl.StochasticDepth(0.7, seed=1, name="sd")([h, r])
    model = keras.Model(inp, out)
    folded = fold_stochastic_depth(model)
    x = tf.random.stateless_normal([4, 6], seed=[0, 3])
    np.testing.assert_allclose(folded(x), model(x), atol=1e-5)
    assert isinstance(folded.get_layer("sd"), keras.layers.Add)
    np.testing.assert_allclose(folded.get_layer("res").kernel, 0.7 * model.get_layer("res").kernel)


def test_fold_rejects_non_affine_residual():
    inp = keras.Input((6,))
    r = keras.layers.Activation("relu", name="act")(keras.layers.Dense(6)(inp))
    model = keras.Model(inp, sdl.StochasticDepth(0.7, seed=1)([inp, r]))
    with pytest.raises(ValueError, match="cannot fold"):
        fold_stochastic_depth(model)


def test_fold_rejects_residual_producer_used_twice():
    # Scaling a layer that also feeds something else would change that other output too.
    inp = keras.Input((6,))
    shared = keras.layers.Dense(6, name="shared")
    r = shared(inp)
    other = shared(r)
    out = sdl.StochasticDepth(0.7, seed=1)([other, r])
    model = keras.Model(inp, out)
    with pytest.raises(ValueError, match="cannot fold.*more than once"):
        fold_stochastic_depth(model)


def test_scale_layer_output_scales_batchnorm_without_center():
    bn = keras.layers.BatchNormalization(center=False)
    bn.build((None, 4))
    bn.gamma.assign([1.0, 2.0, 3.0, 4.0])
    x = tf.random.stateless_normal([3, 4], seed=[0, 1])
    before = bn(x, training=False).numpy()
    assert tfsd.models.scale_layer_output(bn, 0.25) is bn
    np.testing.assert_allclose(bn(x, training=False), 0.25 * before, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="positive finite"):
        tfsd.models.scale_layer_output(bn, -1.0)
    with pytest.raises(ValueError, match="expected a BatchNormalization"):
        tfsd.models.scale_layer_output(keras.layers.ReLU(), 2.0)


def test_fold_pair_form_looks_through_scale_equivariant_layers():
    # The residual reaches the pair layer through Dropout and padding: p goes into the Conv.
    inp = keras.Input((6, 6, 3))
    r = keras.layers.Conv2D(3, 3, name="res")(inp)
    r = keras.layers.ZeroPadding2D(1)(keras.layers.Dropout(0.2)(r))
    model = keras.Model(inp, sdl.StochasticDepth(0.6, seed=1, name="sd")([inp, r]))
    model.get_layer("res").bias.assign([0.1, -0.2, 0.3])
    folded = fold_stochastic_depth(model)
    x = tf.random.stateless_normal([2, 6, 6, 3], seed=[0, 4])
    np.testing.assert_allclose(folded(x), model(x), atol=1e-5)
    np.testing.assert_allclose(folded.get_layer("res").kernel, 0.6 * model.get_layer("res").kernel)
    np.testing.assert_allclose(folded.get_layer("res").bias, 0.6 * model.get_layer("res").bias)
