"""add_stochastic_depth on hand-made functional models: the structural rule, exactness, safety.

Expected values are hand-computed from the models' own layers (the branch sub-graph read off the
original model) or are the original model's outputs; keras.applications models are covered in
tests/test_rewrite_apps.py.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import randomize_batchnorm, sgd_step
from tfsd import layers as sdl
from tfsd.models import fold_stochastic_depth
from tfsd.models.rewrite import add_stochastic_depth, find_residual_blocks


def _conv_bn(x, filters, name, kernel=3, strides=1):
    x = keras.layers.Conv2D(filters, kernel, strides, padding="same", name=f"{name}_conv")(x)
    return keras.layers.BatchNormalization(name=f"{name}_bn")(x)


def _handmade(drop_rate: float = 0.0) -> keras.Model:
    """Stem, an identity block, a projection block, a non-residual Add (two 3×3 paths), head."""
    inp = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Activation("relu", name="stem_relu")(_conv_bn(inp, 8, "stem"))
    # Identity block (ResNet v1 style), optionally with a per-example drop-path Dropout.
    r = keras.layers.Activation("relu", name="a1_relu")(_conv_bn(x, 8, "a1"))
    r = _conv_bn(r, 8, "a2")
    if drop_rate:
        r = keras.layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name="a_drop")(r)
    x = keras.layers.Add(name="a_add")([x, r])
    x = keras.layers.Activation("relu", name="a_out")(x)
    # Projection block: 1×1 stride-2 conv + BN shortcut.
    s = _conv_bn(x, 16, "b0", kernel=1, strides=2)
    r = keras.layers.Activation("relu", name="b1_relu")(_conv_bn(x, 16, "b1", strides=2))
    r = _conv_bn(r, 16, "b2")
    x = keras.layers.Add(name="b_add")([s, r])
    # Not residual: the sum of two 3×3 convolutions of one tensor.
    u = keras.layers.Conv2D(16, 3, padding="same", name="c_left")(x)
    v = keras.layers.Conv2D(16, 3, padding="same", name="c_right")(x)
    x = keras.layers.Add(name="c_add")([u, v])
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(5, name="head")(x), name="handmade")
    randomize_batchnorm(model)
    return model


def _x(shape=(4, 8, 8, 3), seed=1):
    return tf.random.stateless_normal(shape, seed=[seed, 7])


def _weights_by_layer(model):
    return {
        lay.name: lay.get_weights()
        for lay in model._flatten_layers(include_self=False)
        if lay.weights and not isinstance(lay, (keras.Model, sdl.StochasticDepth))
    }


def test_rule_finds_identity_and_projection_blocks_and_leaves_the_other_add():
    model = _handmade()
    new, report = add_stochastic_depth(model, survival_prob=0.5, return_report=True)
    assert [b.name for b in report.blocks] == ["a_add", "b_add"]
    assert report.blocks[0].shortcut == ()
    assert report.blocks[1].shortcut == ("b0_conv", "b0_bn")  # stays outside the branch
    assert set(report.blocks[1].branch) == {"b1_conv", "b1_bn", "b1_relu", "b2_conv", "b2_bn"}
    ((name, why),) = report.skipped
    assert name == "c_add" and "Conv2D 3x3" in why
    # Linear rule over the 2 blocks found, as tfsd's builders: p_l = 1 - l/L (1 - p_L).
    assert [b.survival_prob for b in report.blocks] == [0.75, 0.5]
    sd = sdl.stochastic_depth_layers(new)
    assert [lay.name for lay in sd] == ["a_add", "b_add"]
    assert all(isinstance(lay, sdl.StochasticResidual) for lay in sd)
    assert [lay.mode for lay in sd] == ["batch", "batch"]  # no drop-path layer: the paper's
    assert isinstance(new.get_layer("c_add"), keras.layers.Add)
    assert find_residual_blocks(model).skipped == report.skipped  # analysis only, same result


def test_weights_carried_over_and_original_untouched():
    model = _handmade()
    before = _weights_by_layer(model)
    nodes_before = {lay.name: len(lay._inbound_nodes) for lay in model.layers}
    new = add_stochastic_depth(model, survival_prob=0.5)
    after = _weights_by_layer(new)
    assert sorted(after) == sorted(before)
    for name, ws in before.items():
        for a, b in zip(ws, after[name], strict=True):
            np.testing.assert_array_equal(a, b)
    # Copies, not the same variables: training the new model leaves the original alone.
    new.get_layer("head").kernel.assign(np.zeros((16, 5), "float32"))
    np.testing.assert_array_equal(model.get_layer("head").get_weights()[0], before["head"][0])
    assert {lay.name: len(lay._inbound_nodes) for lay in model.layers} == nodes_before


def test_inference_equal_and_training_equal_at_p1():
    model = _handmade()
    x = _x()
    new = add_stochastic_depth(model, survival_prob=0.5)
    # Inverted scaling (the default): inference is the plain sum, as the original computes it.
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), rtol=1e-6, atol=0)
    same = add_stochastic_depth(model, survival_prob=1.0)
    assert len(sdl.stochastic_depth_layers(same)) == 2
    # BatchNorm in training mode uses batch statistics in both models.
    np.testing.assert_allclose(
        same(x, training=True).numpy(), model(x, training=True).numpy(), rtol=1e-6, atol=1e-7
    )


def test_paper_scaling_infers_shortcut_plus_p_branch():
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="h")(inp)
    r = keras.layers.Dense(6, name="r2")(keras.layers.Dense(6, activation="relu", name="r1")(h))
    model = keras.Model(inp, keras.layers.Add(name="add")([h, r]))
    new = add_stochastic_depth(model, survival_prob=0.6, scale_at="inference")
    x = _x((3, 6))
    shortcut = keras.Model(inp, h)(x).numpy()
    branch = keras.Model(inp, r)(x).numpy()
    np.testing.assert_allclose(new(x).numpy(), shortcut + 0.6 * branch, rtol=1e-6, atol=1e-6)


def test_drop_path_dropout_replaced_keeps_rate_and_per_example_semantics():
    model = _handmade(drop_rate=0.3)
    new, report = add_stochastic_depth(model, return_report=True)  # p from the rates
    assert report.blocks[0].replaced == "a_drop (rate 0.3)"
    assert [b.survival_prob for b in report.blocks] == [pytest.approx(0.7), 1.0]
    assert "a_drop" not in [lay.name for lay in new._flatten_layers()]
    layer = new.get_layer("a_add")
    assert (layer.mode, layer.scale_at, layer.sample_skip) == ("sample", "train", True)
    np.testing.assert_allclose(new(_x()).numpy(), model(_x()).numpy(), rtol=1e-6, atol=0)
    # An explicit p_L replaces the rates by the schedule.
    sched = add_stochastic_depth(model, survival_prob=0.8, mode="batch")
    assert [lay.survival_prob for lay in sdl.stochastic_depth_layers(sched)] == [0.9, 0.8]


def test_fold_and_keras_round_trips(tmp_path):
    model = _handmade()
    x = _x()
    new = add_stochastic_depth(model, survival_prob=0.5, mode="sample", sample_skip=False)
    folded = fold_stochastic_depth(new)  # folding(add(model)) ≈ model
    assert not sdl.stochastic_depth_layers(folded)
    np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-7)
    assert sorted(_weights_by_layer(folded)) == sorted(_weights_by_layer(model))
    path = tmp_path / "m.keras"
    new.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(x).numpy(), new(x).numpy())
    # Training outputs too: the gates depend on the seed, the name and the step only.
    np.testing.assert_array_equal(loaded(x, training=True).numpy(), new(x, training=True).numpy())


def test_training_step_skips_dropped_branch_under_tf_function():
    model = _handmade()
    new = add_stochastic_depth(model, survival_prob=0.5, seed=3)
    step = sgd_step(new, jit_compile=False)
    x, y = _x(), tf.constant([0, 1, 2, 3])
    names = [v.path for v in new.trainable_variables]
    norms = {}
    for _ in range(8):
        for name, n in zip(names, step(x, y)[1]):
            norms.setdefault(name, []).append(float(n))
    a2 = [n for name, n in norms.items() if "a2_conv/kernel" in name][0]
    # p = 0.75 for block a: over 8 steps it is dropped (zero gradient) and kept at least once.
    assert min(a2) == 0.0 and max(a2) > 0.0
    assert min(norms[[k for k in names if "head/kernel" in k][0]]) > 0.0


def test_mask_mode_trains_under_xla():
    new = add_stochastic_depth(_handmade(), 0.5, mode="sample", sample_skip=False)
    step = sgd_step(new, jit_compile=True)
    before = new.get_layer("head").kernel.numpy()
    assert np.isfinite(float(step(_x(), tf.constant([0, 1, 2, 3]))[0]))
    assert not np.array_equal(new.get_layer("head").kernel.numpy(), before)
    with pytest.raises(ValueError, match="XLA"):  # the skipping form is refused under XLA
        skip = add_stochastic_depth(_handmade(), 0.5, mode="sample")
        tf.function(lambda x: skip(x, training=True), jit_compile=True)(_x())


def test_multi_io_nested_and_shared_layers():
    # A sub-model with a residual block, called on both inputs (shared), and a shared Dense.
    sub_in = keras.Input((6,))
    h = keras.layers.Dense(6, activation="relu", name="s1")(sub_in)
    sub_out = keras.layers.Add(name="sub_add")([sub_in, keras.layers.Dense(6, name="s2")(h)])
    sub = keras.Model(sub_in, sub_out, name="sub")
    a, b = keras.Input((6,), name="a"), keras.Input((6,), name="b")
    shared = keras.layers.Dense(6, name="shared")
    ya, yb = sub(shared(a)), sub(shared(b))
    both = keras.layers.Add(name="both")([ya, yb])  # two inputs' paths: not residual
    model = keras.Model([a, b], {"sum": both, "a": ya})
    new, report = add_stochastic_depth(model, survival_prob=0.5, return_report=True)
    assert [blk.name for blk in report.blocks] == ["sub_add"]
    assert [n for n, _ in report.skipped] == ["both"]
    xa, xb = _x((2, 6), 1), _x((2, 6), 2)
    out, ref = new([xa, xb]), model([xa, xb])
    assert sorted(out) == ["a", "sum"]
    for k in out:
        np.testing.assert_allclose(out[k].numpy(), ref[k].numpy(), rtol=1e-6, atol=0)
    new_sub = new.get_layer("sub")
    assert len(new_sub._inbound_nodes) == 2  # still one shared sub-model
    assert len(new.get_layer("shared")._inbound_nodes) == 2


def test_branch_used_outside_is_left_alone_and_refusals():
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="h")(inp)
    r = keras.layers.Dense(6, name="r")(h)
    out = keras.layers.Add(name="add")([inp, r])
    model = keras.Model(inp, [out, h])  # h, inside the would-be branch, is also an output
    new, report = add_stochastic_depth(model, survival_prob=0.5, return_report=True)
    assert not report.blocks and "used outside" in report.skipped[0][1]
    assert not sdl.stochastic_depth_layers(new)
    with pytest.raises(ValueError, match="no drop-path layer"):
        add_stochastic_depth(_handmade())  # survival_prob=None needs rates to keep
    with pytest.raises(ValueError, match="functional keras.Model"):
        add_stochastic_depth(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), 0.5)
    with pytest.raises(ValueError, match="sample_skip"):
        add_stochastic_depth(_handmade(), 0.5, mode="batch", sample_skip=True)


class _NoConfig(keras.layers.Layer):
    """A layer taking a function: Keras cannot record it for get_config()."""

    def __init__(self, fn, **kwargs):
        super().__init__(**kwargs)
        self.fn = fn

    def call(self, x):
        return self.fn(x)


def test_hidden_graphs_reported_and_uncopyable_layer_refused_by_name():
    inner_in = keras.Input((6,))
    inner = keras.Model(inner_in, keras.layers.Add(name="hidden_add")([inner_in, inner_in]))
    inp = keras.Input((6,))
    model = keras.Model(inp, keras.Sequential([inner, keras.layers.Dense(6)], name="seq")(inp))
    new, report = add_stochastic_depth(model, 0.5, return_report=True)
    assert report.skipped == (("hidden_add", "inside 'seq', whose graph is not inspected"),)
    np.testing.assert_allclose(new(_x((2, 6))).numpy(), model(_x((2, 6))).numpy(), rtol=1e-6)
    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="h")(inp)
    bad = keras.Model(inp, keras.layers.Add()([inp, _NoConfig(tf.math.square, name="odd")(h)]))
    with pytest.raises(ValueError, match="cannot copy layer 'odd'"):
        add_stochastic_depth(bad, 0.5)
