"""Tests of tfsd.layers: statistics, seeds, replicas, graphs, compute skipping, serialization."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import op_types
from tfsd import layers as sdl

P = 0.7


def _pair(batch=4, shape=(3, 3, 2), seed=0):
    rng = np.random.default_rng(seed)
    shortcut = rng.normal(size=(batch, *shape)).astype("float32")
    residual = rng.normal(size=(batch, *shape)).astype("float32")
    return tf.constant(shortcut), tf.constant(residual)


def _gates(layer, shortcut, residual, steps):
    """The training-time residual factors (b or b / p) of ``steps`` successive calls.

    Feeds ``[0, 1]`` of the pair's shape so the output *is* the factor, with no rounding.
    """
    zeros, ones = tf.zeros_like(shortcut), tf.ones_like(residual)
    fn = tf.function(lambda s, r: layer([s, r], training=True))
    return np.stack([fn(zeros, ones).numpy() for _ in range(steps)])


# -------------------------------------------------------------------------------------------------
# Statistics.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_at", ["inference", "train"])
def test_batch_mode_mean_matches_inference_within_4_sigma(scale_at):
    n = 2000
    shortcut, residual = _pair()
    layer = sdl.StochasticDepth(P, mode="batch", scale_at=scale_at, seed=11)
    outs = []
    fn = tf.function(lambda s, r: layer([s, r], training=True))
    for _ in range(n):
        outs.append(fn(shortcut, residual).numpy())
    outs = np.stack(outs)
    gates = (outs - shortcut.numpy()) / residual.numpy()
    # One gate per call: every element of a call carries the same factor.
    np.testing.assert_allclose(gates, gates[:, :1, :1, :1, :1] * np.ones_like(gates), atol=1e-4)
    kept = gates[:, 0, 0, 0, 0] > 0.5
    sigma = math.sqrt(P * (1 - P) / n)
    assert abs(kept.mean() - P) < 4 * sigma
    # Mean training output vs inference output, within 4 sigma of the binomial error.
    inference = layer([shortcut, residual], training=False).numpy()
    factor = 1.0 if scale_at == "inference" else 1.0 / P
    bound = 4 * sigma * factor * np.abs(residual.numpy()) + 1e-5
    assert np.all(np.abs(outs.mean(0) - inference) <= bound)


@pytest.mark.parametrize("scale_at", ["inference", "train"])
def test_sample_mode_frequencies_and_independence(scale_at):
    batch, steps = 1024, 8
    shortcut, residual = _pair(batch=batch, shape=(2, 3))
    layer = sdl.StochasticDepth(P, mode="sample", scale_at=scale_at, seed=5)
    gates = _gates(layer, shortcut, residual, steps)  # [steps, batch, 2, 3]
    # One gate per example, broadcast over all other axes.
    np.testing.assert_allclose(gates, gates[:, :, :1, :1] * np.ones_like(gates), atol=1e-4)
    g = gates[:, :, 0, 0]
    expected = 1.0 if scale_at == "inference" else 1.0 / P
    np.testing.assert_allclose(np.unique(np.round(g, 4)), [0.0, round(expected, 4)], atol=1e-4)
    kept = g > 0.5 * expected
    n = kept.size
    assert abs(kept.mean() - P) < 4 * math.sqrt(P * (1 - P) / n)
    # Independence across the batch: P(both neighbours kept) = p^2.
    both = (kept[:, :-1] & kept[:, 1:]).ravel()
    assert abs(both.mean() - P * P) < 4 * math.sqrt(P * P * (1 - P * P) / both.size)
    # Mean over examples and steps of the factor is 1 (train) or p (inference), within 4 sigma.
    mean_factor = g.mean()
    target = P * expected
    assert abs(mean_factor - target) < 4 * expected * math.sqrt(P * (1 - P) / n)


# -------------------------------------------------------------------------------------------------
# Seeds, steps and replicas.
# -------------------------------------------------------------------------------------------------


def test_same_seed_and_step_reproduce_and_steps_differ():
    """Same seed, same name and same step: the same gates (the name is part of the key)."""
    shortcut, residual = _pair(batch=64)
    a = sdl.StochasticDepth(0.5, mode="sample", seed=3, name="block")
    b = sdl.StochasticDepth(0.5, mode="sample", seed=3, name="block")
    ga = _gates(a, shortcut, residual, 5)
    gb = _gates(b, shortcut, residual, 5)
    np.testing.assert_array_equal(ga, gb)
    # Successive steps draw new gates.
    assert all(not np.array_equal(ga[i], ga[i + 1]) for i in range(4))
    assert int(a.step.numpy()) == 5
    # Rewinding the step counter replays the stream.
    a.step.assign(2)
    np.testing.assert_array_equal(_gates(a, shortcut, residual, 1)[0], ga[2])


def test_different_seeds_draw_different_gates():
    shortcut, residual = _pair(batch=64)
    ga = _gates(sdl.StochasticDepth(0.5, mode="sample", seed=1, name="b"), shortcut, residual, 3)
    gb = _gates(sdl.StochasticDepth(0.5, mode="sample", seed=2, name="b"), shortcut, residual, 3)
    assert not np.array_equal(ga, gb)


def test_seed_none_is_drawn_from_python_random_and_stored():
    keras.utils.set_random_seed(123)
    a = sdl.StochasticDepth(0.5)
    keras.utils.set_random_seed(123)
    b = sdl.StochasticDepth(0.5)
    assert a.seed == b.seed and a.get_config()["seed"] == a.seed


def _mirrored():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest)")
    return tf.distribute.MirroredStrategy([d.name for d in devices[:2]])


@pytest.mark.parametrize("sync_replicas", [False, True])
def test_mirrored_replicas_draw_own_or_synced_gates(sync_replicas):
    strategy = _mirrored()
    x = tf.ones([256, 2])
    with strategy.scope():
        layer = sdl.StochasticDepth(
            0.5, mode="sample", seed=9, sync_replicas=sync_replicas, name="sd"
        )
        layer([x, x])  # build inside the scope: one counter per replica

    @tf.function
    def step():
        return strategy.run(lambda: layer([x, x], training=True))

    per_replica = [strategy.experimental_local_results(step()) for _ in range(3)]
    for r0, r1 in per_replica:
        if sync_replicas:
            np.testing.assert_array_equal(r0.numpy(), r1.numpy())
        else:
            assert not np.array_equal(r0.numpy(), r1.numpy())
    # Replica 0 with sync_replicas draws what a single-device layer with the same seed draws.
    single = sdl.StochasticDepth(0.5, mode="sample", seed=9, name="sd")
    expected = single([x, x], training=True).numpy()
    np.testing.assert_array_equal(per_replica[0][0].numpy(), expected)
    assert int(layer.step.numpy()) == 3


def test_mirrored_skipping_residual_trains_with_batchnorm():
    strategy = _mirrored()
    with strategy.scope():
        branch = keras.Sequential(
            [
                keras.Input((4, 4, 2)),
                keras.layers.Conv2D(2, 3, padding="same"),
                keras.layers.BatchNormalization(),
            ]
        )
        inp = keras.Input((4, 4, 2))
        model = keras.Model(inp, sdl.StochasticResidual(branch, 0.5, seed=2)(inp))
        opt = keras.optimizers.SGD(0.1)
        opt.build(model.trainable_variables)
    x = tf.random.stateless_normal([8, 4, 4, 2], seed=[1, 2])

    @tf.function
    def train_step():
        def fn():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(model(x, training=True)))
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply(grads, model.trainable_variables)
            return loss

        return strategy.reduce("mean", strategy.run(fn), axis=None)

    kernel0 = model.trainable_variables[0].numpy()
    losses = [float(train_step()) for _ in range(6)]
    assert all(np.isfinite(losses))
    assert not np.array_equal(kernel0, model.trainable_variables[0].numpy())


# -------------------------------------------------------------------------------------------------
# Graphs: no random op at inference, exact identity at p = 1.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("cls", ["depth", "residual"])
def test_inference_graph_has_no_random_ops(mode, cls):
    spec = tf.TensorSpec([4, 3, 3, 2])
    if cls == "depth":
        layer = sdl.StochasticDepth(0.5, mode=mode, seed=1)
        train = op_types(lambda x: layer([x, x], training=True), spec)
        infer = op_types(lambda x: layer([x, x], training=False), spec)
        none = op_types(lambda x: layer([x, x]), spec)
    else:
        branch = keras.layers.Conv2D(2, 1)
        layer = sdl.StochasticResidual(branch, 0.5, mode=mode, seed=1)
        train = op_types(lambda x: layer(x, training=True), spec)
        infer = op_types(lambda x: layer(x, training=False), spec)
        none = op_types(lambda x: layer(x), spec)
    assert any("Random" in t for t in train)  # the test can fail: training does draw
    assert not any("Random" in t for t in infer)
    assert not any("Random" in t for t in none)


@pytest.mark.parametrize("mode", ["batch", "sample"])
@pytest.mark.parametrize("scale_at", ["inference", "train"])
def test_survival_one_is_exact_identity_without_random_ops(mode, scale_at):
    shortcut, residual = _pair()
    layer = sdl.StochasticDepth(1.0, mode=mode, scale_at=scale_at, seed=1)
    for training in (True, False):
        np.testing.assert_array_equal(
            layer([shortcut, residual], training=training).numpy(),
            (shortcut + residual).numpy(),
        )
        types = op_types(
            lambda s, r: layer([s, r], training=training),
            tf.TensorSpec(shortcut.shape),
            tf.TensorSpec(residual.shape),
        )
        assert not any("Random" in t for t in types)
    assert int(layer.step.numpy()) == 0


def test_inference_scaling_values():
    shortcut, residual = _pair()
    paper = sdl.StochasticDepth(P, scale_at="inference", seed=1)
    inverted = sdl.StochasticDepth(P, scale_at="train", seed=1)
    np.testing.assert_allclose(paper([shortcut, residual]), shortcut + P * residual, rtol=1e-6)
    np.testing.assert_allclose(inverted([shortcut, residual]), shortcut + residual, rtol=1e-6)


# -------------------------------------------------------------------------------------------------
# The compute-skipping residual.
# -------------------------------------------------------------------------------------------------


class CountingBranch(keras.layers.Layer):
    """A Dense branch that counts its own executions in a variable."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(units)
        self.units = units

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=None):
        self.calls.assign_add(1.0)
        return self.dense(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@pytest.mark.parametrize("jit", [False, True])
def test_residual_skips_dropped_branch_forward_and_backward(jit):
    branch = CountingBranch()
    layer = sdl.StochasticResidual(branch, 0.5, seed=4)
    x = tf.constant(np.random.default_rng(0).normal(size=(8, 3)).astype("float32"))
    layer(x)
    calls_before = float(branch.calls.numpy())

    @tf.function(jit_compile=jit)
    def step(x):
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, branch.dense.trainable_variables)

    kept_steps, outputs = 0, []
    for _ in range(40):
        before = float(branch.calls.numpy())
        y, grads = step(x)
        ran = float(branch.calls.numpy()) - before
        kept = float(layer.keep_rate.numpy())
        assert ran == kept  # the branch ran exactly when its gate kept it
        if kept:
            kept_steps += 1
            assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in grads)
        else:
            np.testing.assert_array_equal(y.numpy(), x.numpy())
            assert all(float(tf.reduce_sum(tf.abs(g))) == 0.0 for g in grads)
        outputs.append(y.numpy())
    assert 0 < kept_steps < 40
    assert float(branch.calls.numpy()) - calls_before == kept_steps


def test_residual_eager_skip_gives_no_gradient_and_no_bn_update():
    bn = keras.layers.BatchNormalization()
    branch = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3), bn])
    layer = sdl.StochasticResidual(branch, 0.5, seed=0)
    x = tf.constant(np.random.default_rng(1).normal(size=(16, 3)).astype("float32"))
    seen = set()
    for _ in range(20):
        mean_before = bn.moving_mean.numpy().copy()
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y)
        grads = tape.gradient(loss, branch.trainable_variables)
        kept = bool(layer.keep_rate.numpy())
        seen.add(kept)
        if kept:
            assert not np.array_equal(mean_before, bn.moving_mean.numpy())
        else:
            assert all(g is None for g in grads)
            np.testing.assert_array_equal(mean_before, bn.moving_mean.numpy())
    assert seen == {True, False}


@pytest.mark.parametrize("scale_at", ["inference", "train"])
def test_residual_matches_stochastic_depth(scale_at):
    """Sample mode and inference of the wrapper equal StochasticDepth on the branch output."""
    branch = keras.layers.Dense(3)
    x = tf.constant(np.random.default_rng(2).normal(size=(32, 3)).astype("float32"))
    wrapper = sdl.StochasticResidual(
        branch, 0.6, mode="sample", scale_at=scale_at, seed=8, name="blk"
    )
    plain = sdl.StochasticDepth(0.6, mode="sample", scale_at=scale_at, seed=8, name="blk")
    for training in (True, True, False):
        np.testing.assert_allclose(
            wrapper(x, training=training), plain([x, branch(x)], training=training), rtol=1e-6
        )
    # Batch mode at inference too, with an explicit shortcut.
    batch = sdl.StochasticResidual(branch, 0.6, scale_at=scale_at, seed=8)
    s = x * 2.0
    expected = s + (0.6 if scale_at == "inference" else 1.0) * branch(x)
    np.testing.assert_allclose(batch(x, shortcut=s), expected, rtol=1e-6)


# -------------------------------------------------------------------------------------------------
# dtypes, XLA, serialization.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_mixed_precision_dtypes(policy, mode):
    keras.mixed_precision.set_global_policy(policy)
    compute = tf.float16 if policy == "mixed_float16" else tf.bfloat16
    x = tf.ones([8, 4])
    layer = sdl.StochasticDepth(0.5, mode=mode, scale_at="train", seed=1)
    for training in (True, False):
        y = layer([x, x], training=training)
        assert y.dtype == compute
    types = op_types(lambda t: layer([t, t], training=True), tf.TensorSpec([8, 4]))
    assert "Cast" in types  # the gate is cast into the compute dtype, not computed in float32
    # The wrapper around a mixed-precision Dense branch.
    wrapper = sdl.StochasticResidual(keras.layers.Dense(4), 0.5, seed=2)
    for _ in range(4):
        assert wrapper(x, training=True).dtype == compute
    assert wrapper(x).dtype == compute
    # Gate values are exactly representable: factor 1/p = 2 for p = 0.5.
    vals = np.unique(layer([x, x], training=True).numpy().astype("float32"))
    assert set(vals.tolist()) <= {1.0, 3.0}


@pytest.mark.parametrize("mode", ["batch", "sample"])
def test_jit_compile_train_step(mode):
    branch = keras.Sequential(
        [
            keras.Input((4, 4, 2)),
            keras.layers.Conv2D(2, 3, padding="same"),
            keras.layers.BatchNormalization(),
        ]
    )
    inp = keras.Input((4, 4, 2))
    h = sdl.StochasticResidual(branch, 0.5, mode=mode, seed=3)(inp)
    out = sdl.StochasticDepth(0.5, mode=mode, scale_at="train", seed=4)([h, h])
    model = keras.Model(inp, out)
    x = tf.random.stateless_normal([4, 4, 4, 2], seed=[0, 1])

    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(x, training=True))
        return loss, tape.gradient(loss, model.trainable_variables)

    xla, graph = tf.function(step, jit_compile=True), tf.function(step)
    for _ in range(4):
        steps = [int(lay.step.numpy()) for lay in sdl.stochastic_depth_layers(model)]
        loss_xla, _ = xla(x)
        for lay, s in zip(sdl.stochastic_depth_layers(model), steps):
            lay.step.assign(s)  # replay the same gates without XLA
        loss_graph, _ = graph(x)
        np.testing.assert_allclose(float(loss_xla), float(loss_graph), rtol=1e-4, atol=1e-4)


def test_keras_round_trip_preserves_outputs_and_stream(tmp_path):
    inp = keras.Input((6,))
    branch_in = keras.Input((6,))
    branch = keras.Model(branch_in, keras.layers.Dense(6)(branch_in), name="branch")
    h = sdl.StochasticResidual(branch, 0.5, seed=1, name="res")(inp)
    r = keras.layers.Dense(6)(h)
    out = sdl.StochasticDepth(0.6, mode="sample", scale_at="train", seed=2, name="sd")([h, r])
    model = keras.Model(inp, out)
    x = tf.constant(np.random.default_rng(3).normal(size=(16, 6)).astype("float32"))
    model(x, training=True)  # advance the step counters to 1
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(model(x), loaded(x), rtol=1e-6)
    assert int(loaded.get_layer("res").step.numpy()) == 1
    for _ in range(3):  # same step counters, same seeds: identical training outputs
        np.testing.assert_allclose(model(x, training=True), loaded(x, training=True), rtol=1e-6)


def test_get_config_matches_constructor_kwargs():
    kwargs = dict(survival_prob=0.3, mode="sample", scale_at="train", sync_replicas=True, seed=17)
    config = sdl.StochasticDepth(**kwargs, name="sd").get_config()
    assert {k: config[k] for k in kwargs} == kwargs
    clone = sdl.StochasticDepth.from_config(config)
    assert {k: clone.get_config()[k] for k in kwargs} == kwargs
    branch = keras.layers.Dense(2, name="inner")
    res = sdl.StochasticResidual(branch, **kwargs)
    rconfig = res.get_config()
    assert {k: rconfig[k] for k in kwargs} == kwargs
    rclone = sdl.StochasticResidual.from_config(rconfig)
    assert isinstance(rclone.branch, keras.layers.Dense)
    assert rclone.branch.get_config()["units"] == 2


# -------------------------------------------------------------------------------------------------
# Bad input.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.0, -0.1, 1.5, float("nan"), "0.5", True])
def test_bad_survival_prob(p):
    with pytest.raises(ValueError, match="survival_prob"):
        sdl.StochasticDepth(p)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown mode"):
        sdl.StochasticDepth(0.5, mode="row")
    with pytest.raises(ValueError, match="Unknown scale_at"):
        sdl.StochasticDepth(0.5, scale_at="test")
    with pytest.raises(ValueError, match="seed"):
        sdl.StochasticDepth(0.5, seed=-1)
    with pytest.raises(ValueError, match="sync_replicas"):
        sdl.StochasticDepth(0.5, sync_replicas="yes")
    with pytest.raises(ValueError, match="branch must be a keras Layer"):
        sdl.StochasticResidual(lambda x: x, 0.5)


def test_bad_inputs():
    layer = sdl.StochasticDepth(0.5)
    x = tf.ones([2, 3])
    with pytest.raises(ValueError, match=r"pair \[shortcut, residual\]|list of two"):
        layer(x)
    with pytest.raises(ValueError, match=r"pair \[shortcut, residual\]|list of two"):
        layer({"a": x, "b": x})
    with pytest.raises(ValueError, match=r"pair|list of two"):
        sdl.StochasticDepth(0.5)([x, x, x])
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        sdl.StochasticDepth(0.5)([x, tf.ones([2, 4])])
    with pytest.raises(ValueError, match="shortcut and residual shapes"):
        sdl.StochasticDepth(0.5)([keras.Input((3,)), keras.Input((5,))])
    with pytest.raises(ValueError, match="shortcut and residual shapes"):
        sdl.StochasticResidual(keras.layers.Dense(4), 0.5)(keras.Input((3,)))


# -------------------------------------------------------------------------------------------------
# Schedules.
# -------------------------------------------------------------------------------------------------


def test_linear_schedule_is_the_papers_rule():
    probs = sdl.survival_schedule(54, 0.5)
    assert len(probs) == 54
    np.testing.assert_allclose(probs, [1 - (i / 54) * 0.5 for i in range(1, 55)])
    assert probs[-1] == pytest.approx(0.5) and probs[0] == pytest.approx(1 - 0.5 / 54)
    # Expected number of active blocks, the paper's (3L - 1) / 4 for p_L = 0.5 (exactly
    # L - (L + 1) / 4 under this rule, which rounds to the paper's figure).
    assert sum(probs) == pytest.approx(54 - 55 / 4)
    assert abs(sum(probs) - (3 * 54 - 1) / 4) < 0.5
    assert sdl.survival_schedule(3, 0.8, "uniform") == [0.8, 0.8, 0.8]


def test_efficientnet_schedule():
    probs = sdl.efficientnet_survival_schedule(16, 0.2)
    np.testing.assert_allclose(probs, [1 - 0.2 * i / 16 for i in range(16)])
    assert probs[0] == 1.0 and probs[-1] == pytest.approx(1 - 0.2 * 15 / 16)


@pytest.mark.parametrize(
    "call",
    [
        lambda: sdl.survival_schedule(0, 0.5),
        lambda: sdl.survival_schedule(3, 0.0),
        lambda: sdl.survival_schedule(3, 0.5, "cosine"),
        lambda: sdl.survival_schedule(2.5, 0.5),
        lambda: sdl.efficientnet_survival_schedule(3, 1.0),
    ],
)
def test_schedule_errors(call):
    with pytest.raises(ValueError):
        call()
