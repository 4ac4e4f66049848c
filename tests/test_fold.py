"""fold_stochastic_depth: folded inference models equal the originals and carry no SD ops."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsd.models  # noqa: F401  (registration)
from tests.helpers import op_types
from tests.helpers import randomize_batchnorm as _randomize_bn
from tfsd import layers as sdl
from tfsd.models import create_model, fold_stochastic_depth


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
    assert not sdl.stochastic_depth_layers(folded)  # plain Keras: no tfsd layer left
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


def test_fold_refuses_residual_whose_producer_output_has_other_consumers():
    """Review gap: ``r`` also feeds a Concatenate, so folding p into ``res`` would change it too.

    The old fold scaled ``res`` silently: the folded model's concat output was wrong by 0.7x.
    """
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="h")(inp)
    r = keras.layers.Dense(6, name="res")(h)
    y = sdl.StochasticDepth(0.7, seed=1, name="sd")([h, r])
    model = keras.Model(inp, keras.layers.Concatenate()([y, r]))
    with pytest.raises(ValueError, match="cannot fold.*'res'.*also feeds"):
        fold_stochastic_depth(model)
    # The same through a scale-equivariant layer, and a residual that is also a model output.
    r2 = keras.layers.Dense(6, name="res2")(h)
    d = keras.layers.Dropout(0.1)(r2)
    model2 = keras.Model(inp, [sdl.StochasticDepth(0.7, seed=1)([h, d]), r2])
    with pytest.raises(ValueError, match="cannot fold.*'res2'.*also feeds"):
        fold_stochastic_depth(model2)


def test_fold_with_exclusive_residual_still_folds():
    # Control for the test above: the same graph without the extra consumer folds and matches.
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="h")(inp)
    r = keras.layers.Dense(6, name="res")(h)
    y = sdl.StochasticDepth(0.7, seed=1, name="sd")([h, r])
    model = keras.Model(inp, keras.layers.Concatenate()([y, h]))
    folded = fold_stochastic_depth(model)
    x = tf.random.stateless_normal([3, 6], seed=[2, 3])
    np.testing.assert_allclose(folded(x), model(x), atol=1e-5)


# The cases of test_folded_model_is_plain_keras_and_loads_without_tfsd: name -> builder kwargs.
PLAIN_KERAS_CASES = {
    "cifar_resnet20": dict(width=0.25, sd_scale_at="inference"),
    "efficientnet_b0": dict(width=0.25, depth=0.34, sd_scale_at="train"),
}

# One fresh interpreter that never imports tfsd loads and runs every folded model (argv[1]: a JSON
# list of [name, model path, input path, expected-output path]); per model it prints one JSON line
# [name, "ok" or the error, whether tfsd was imported]. One interpreter start for all the cases.
_LOAD_WITHOUT_TFSD = """
import json, sys, numpy as np, keras
for name, path, x, expected in json.loads(sys.argv[1]):
    try:
        m = keras.saving.load_model(path)
        y = m(np.load(x), training=False)
        np.testing.assert_allclose(y, np.load(expected), rtol=1e-5, atol=1e-5)
        result = "ok"
    except Exception as e:
        result = repr(e)
    print(json.dumps([name, result, "tfsd" in sys.modules]))
"""


@pytest.fixture(scope="module")
def folded_and_loaded_without_tfsd(tmp_path_factory):
    """name -> (model, folded, child result): every PLAIN_KERAS_CASES model built at 16×16 with
    survival 0.5 and random BN statistics, folded, saved, and loaded and run by one fresh
    interpreter (``_LOAD_WITHOUT_TFSD``); the child result is (its line for the model or None,
    its exit code, its stderr)."""
    directory = tmp_path_factory.mktemp("plain-keras")
    built, jobs = {}, []
    for name, kwargs in PLAIN_KERAS_CASES.items():
        keras.backend.clear_session(free_memory=False)  # as the autouse fixture does per test
        keras.utils.set_random_seed(0)
        model = create_model(
            name, num_classes=5, input_shape=(16, 16, 3), survival_prob=0.5, **kwargs
        )
        _randomize_bn(model)
        folded = fold_stochastic_depth(model)
        x = tf.random.stateless_uniform([2, 16, 16, 3], seed=[5, 6], maxval=255.0)
        paths = [directory / f"{name}{suffix}" for suffix in (".keras", "_x.npy", "_y.npy")]
        folded.save(paths[0])
        np.save(paths[1], x.numpy())
        np.save(paths[2], model(x, training=False).numpy())
        built[name] = model, folded
        jobs.append([name, *map(str, paths)])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_WITHOUT_TFSD, json.dumps(jobs)], capture_output=True,
        text=True, env=env, cwd=directory, timeout=300,
    )  # fmt: skip
    lines = {}
    for line in out.stdout.splitlines():
        if line.startswith("["):
            name, result, imported = json.loads(line)
            lines[name] = (result, imported)
    return {n: (*built[n], (lines.get(n), out.returncode, out.stderr[-3000:])) for n in built}


@pytest.mark.e2e  # the point is a fresh interpreter that never imports tfsd
@pytest.mark.parametrize("name", list(PLAIN_KERAS_CASES))
def test_folded_model_is_plain_keras_and_loads_without_tfsd(folded_and_loaded_without_tfsd, name):
    model, folded, (child, returncode, stderr) = folded_and_loaded_without_tfsd[name]
    assert "tfsd" not in json.dumps(folded.get_config())
    assert not sdl.stochastic_depth_layers(folded)
    # Every stochastic block became a plain Add named after the layer it replaced.
    for layer in sdl.stochastic_depth_layers(model):
        assert isinstance(folded.get_layer(layer.name), keras.layers.Add)
    # The fresh interpreter loaded and ran the folded model, equal to the original's inference
    # output, without importing tfsd.
    assert returncode == 0 and child == ("ok", False), stderr


def test_fold_mul_count_equals_model_without_stochastic_depth():
    kwargs = dict(num_classes=5, input_shape=(32, 32, 3), width=0.25, depth=0.34)
    model = create_model("efficientnet_b0", survival_prob=0.5, sd_scale_at="inference", **kwargs)
    plain = create_model("efficientnet_b0", survival_prob=1.0, **kwargs)
    shape = (2, 32, 32, 3)
    assert _mul_count(model, shape) > _mul_count(plain, shape)  # there is something to fold
    assert _mul_count(fold_stochastic_depth(model), shape) == _mul_count(plain, shape)


def test_fold_replaces_channel_pad_for_unknown_spatial_size():
    # The transpose form of the plain-Keras channel pad (H, W unknown at build time).
    model = create_model(
        "cifar_resnet20", num_classes=5, input_shape=(None, None, 3), width=0.25, survival_prob=0.5
    )
    _randomize_bn(model)
    folded = fold_stochastic_depth(model)
    assert "tfsd" not in json.dumps(folded.get_config())
    for size in (16, 24):
        x = tf.random.stateless_uniform([2, size, size, 3], seed=[7, size], maxval=255.0)
        np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-5, atol=1e-5)
