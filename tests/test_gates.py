"""Gate keys (independent blocks whatever the seeds) and per-example skipping (``sample_skip``).

Complements tests/test_layers.py, which covers the layers' statistics, graphs and serialization.
"""

import itertools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsd import layers as sdl
from tfsd import philox
from tfsd.models import common, create_model

# -------------------------------------------------------------------------------------------------
# Keys: independent blocks with one shared seed.
# -------------------------------------------------------------------------------------------------


def test_one_shared_seed_gives_independent_blocks():
    """The usage of TF Addons / keras-cv docs: ``StochasticDepth(p, seed=42)`` in a loop.

    Caught: gates keyed on (seed, step, replica) only, so these five layers agreed in every step
    (measured 200 of 200); now each key also holds a hash of the layer's (unique) name.
    """
    n, p, blocks = 400, 0.5, 5  # 4-sigma bounds: 0.1 around 0.5; a shared stream gives 1.0
    layers = [sdl.StochasticDepth(p, seed=42) for _ in range(blocks)]  # Keras-made unique names
    x = tf.ones([2, 3])

    @tf.function
    def step():
        for lay in layers:
            lay([x, x], training=True)
        return tf.stack([lay.keep_rate.value for lay in layers])

    kept = np.stack([step().numpy() for _ in range(n)]) > 0.5  # [n, blocks]
    sigma = math.sqrt(p * (1 - p) / n)
    for a, b in itertools.combinations(range(blocks), 2):
        agree = np.mean(kept[:, a] == kept[:, b])  # 0.5 for independent fair gates
        assert abs(agree - 0.5) < 4 * sigma, (a, b, agree)
    for a in range(blocks):
        assert abs(kept[:, a].mean() - p) < 4 * sigma
    # All five equal: 2 · 0.5^5 = 1/16 for independent blocks (1.0 with the shared stream).
    q = 2 * p**blocks
    all_equal = np.mean(np.all(kept == kept[:, :1], axis=1))
    assert abs(all_equal - q) < 4 * math.sqrt(q * (1 - q) / n)


def test_distinct_blocks_never_share_a_stream():
    """Every stochastic-depth layer of a model has its own layer key, with one shared seed too.

    cifar_resnet20 (9 blocks, 36 pairs) at 16x16: this used ResNet-110 (54 blocks), 11 s to
    build. The 100 same-seed layers below are the many-layers case (they were 500; each key is
    a few eager Philox ops, 13 s for 500 on the shared 2-core machine).
    """
    model = create_model("cifar_resnet20", num_classes=10, width=0.25, input_shape=(16, 16, 3))
    sd = sdl.stochastic_depth_layers(model)
    assert len(sd) == 9
    keys = [lay.layer_key() for lay in sd]
    assert len(set(keys)) == len(keys)
    shared = [sdl.StochasticDepth(0.5, seed=7, name=f"b{i}") for i in range(100)]
    assert len({lay.layer_key() for lay in shared}) == 100
    # Two blocks, one seed, sample mode: their gates differ at every step.
    a = sdl.StochasticDepth(0.5, mode="sample", seed=7, name="block_a")
    b = sdl.StochasticDepth(0.5, mode="sample", seed=7, name="block_b")
    zeros, ones = tf.zeros([64, 1]), tf.ones([64, 1])
    for _ in range(5):
        assert not np.array_equal(
            a([zeros, ones], training=True).numpy(), b([zeros, ones], training=True).numpy()
        )


def test_name_hash_is_the_documented_sha256_prefix():
    # sha256(b"conv2_block1_drop") starts 16 bytes known from hashlib; the value is pinned so a
    # change of the hash (which would change every saved model's streams) cannot go unnoticed.
    import hashlib

    digest = hashlib.sha256(b"conv2_block1_drop").digest()
    assert sdl.name_hash("conv2_block1_drop") == int.from_bytes(digest[:8], "little", signed=True)
    assert sdl.name_hash("a") != sdl.name_hash("b")
    assert -(2**63) <= sdl.name_hash("x" * 1000) < 2**63


def _documented_bits(seed, name, step, replica, shape):
    """The draw of the key written in the tfsd.layers docstring, computed independently."""
    fold = tf.random.experimental.stateless_fold_in
    key = tf.constant([0, seed], tf.int64)
    key = fold(key, tf.constant(sdl.name_hash(name), tf.int64), alg="philox")
    key = fold(key, tf.constant(step, tf.int64), alg="philox")
    key = fold(key, tf.constant(replica, tf.int64), alg="philox")
    return tf.random.stateless_uniform(
        shape, seed=key, minval=None, maxval=None, dtype=tf.uint32, alg="philox"
    ).numpy()


def test_gates_are_the_documented_key_seed_name_step():
    p, batch = 0.6, 256
    layer = sdl.StochasticDepth(p, mode="sample", seed=12345, name="conv3_block2_drop")
    zeros, ones = tf.zeros([batch, 1]), tf.ones([batch, 1])
    threshold = round(p * 2**32)
    for step in range(3):
        got = layer([zeros, ones], training=True).numpy()[:, 0] > 0.5
        bits = _documented_bits(12345, "conv3_block2_drop", step, 0, [batch])
        np.testing.assert_array_equal(got, bits.astype(np.int64) < threshold)
    # Resume: a new layer (same name and seed) whose step variable is restored continues.
    resumed = sdl.StochasticDepth(p, mode="sample", seed=12345, name="conv3_block2_drop")
    resumed([zeros, ones])
    resumed.step.assign(7)
    got = resumed([zeros, ones], training=True).numpy()[:, 0] > 0.5
    bits = _documented_bits(12345, "conv3_block2_drop", 7, 0, [batch])
    np.testing.assert_array_equal(got, bits.astype(np.int64) < threshold)


def test_eager_philox_draw_is_the_public_apis():
    """`tfsd.philox.full_int` (one kernel for key and counter eagerly) = TF's public Philox draw."""
    rng = np.random.default_rng(0)
    draw = tf.function(philox.full_int, autograph=False)
    for _ in range(20):
        seed = tf.constant(rng.integers(-(2**63), 2**63 - 1, 2, dtype=np.int64))
        for shape, dtype in [([], tf.int64), ([], tf.uint32), ([5, 1, 1, 1], tf.uint32)]:
            want = tf.random.stateless_uniform(
                shape, seed=seed, minval=None, maxval=None, dtype=dtype, alg="philox"
            ).numpy()
            for got in (philox.full_int(shape, seed, dtype), draw(shape, seed, dtype)):
                assert got.dtype == dtype
                np.testing.assert_array_equal(got.numpy(), want)


def test_replica_keys_under_mirrored_strategy():
    devices = tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        pytest.skip("needs two logical CPU devices (configured in conftest)")
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    batch, p = 128, 0.5
    x = tf.ones([batch, 1])
    with strategy.scope():
        layer = sdl.StochasticDepth(p, mode="sample", seed=3, name="rep")
        layer([x, x])

    @tf.function
    def step():
        return strategy.run(lambda: layer([tf.zeros_like(x), x], training=True))

    for s in range(2):
        outs = strategy.experimental_local_results(step())
        for replica, out in enumerate(outs):
            bits = _documented_bits(3, "rep", s, replica, [batch])
            np.testing.assert_array_equal(out.numpy()[:, 0] > 0.5, bits < round(p * 2**32))


def test_builder_rebuild_and_keras_round_trip_reproduce_streams(tmp_path):
    """Named builder layers: a rebuilt model and a reloaded one draw the same gates.

    The registered test_resnet (the cifar_resnet builder, ResNet-8: 3 blocks) keeps it cheap.
    """
    kw = dict(num_classes=10, sd_mode="sample", seed=5)
    a = create_model("test_resnet", **kw)
    b = create_model("test_resnet", **kw)
    for la, lb in zip(sdl.stochastic_depth_layers(a), sdl.stochastic_depth_layers(b)):
        assert la.layer_key() == lb.layer_key()
    path = str(tmp_path / "m.keras")
    a.save(path)
    loaded = keras.models.load_model(path)
    for la, lb in zip(sdl.stochastic_depth_layers(a), sdl.stochastic_depth_layers(loaded)):
        assert (la.name, la.seed, la.sample_skip) == (lb.name, lb.seed, lb.sample_skip)
        assert la.layer_key() == lb.layer_key()
    # Builders keep their seed keyword: another seed, other keys.
    c = create_model("test_resnet", **{**kw, "seed": 6})
    assert [lay.seed for lay in sdl.stochastic_depth_layers(c)] == [
        common.block_seed(6, i) for i in range(3)
    ]
    assert (
        sdl.stochastic_depth_layers(c)[0].layer_key()
        != sdl.stochastic_depth_layers(a)[0].layer_key()
    )


# -------------------------------------------------------------------------------------------------
# Per-example skipping.
# -------------------------------------------------------------------------------------------------


class RecordingBranch(keras.layers.Layer):
    """Per-channel scale and shift + ReLU that records how many examples it was run on.

    Elementwise on purpose: each output element is computed from that input element alone, with
    one rounding per op, so the branch's result for an example cannot depend on which other
    examples share its batch. The skip form runs the branch on the kept subset and the mask form
    on the whole batch, and the bit-for-bit tests compare the two: a Conv2D branch made them
    differ by 1 ulp in one element of 1600 on an AMD EPYC CPU, because oneDNN chooses its
    convolution kernel (and so the summation order) by batch size.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        # Non-trivial weights (not 1 and 0): a kept example's output differs from its input.
        self.scale = self.add_weight(
            shape=(channels,), initializer=keras.initializers.RandomNormal(seed=1), name="scale"
        )
        self.shift = self.add_weight(
            shape=(channels,), initializer=keras.initializers.RandomNormal(seed=2), name="shift"
        )
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=None):
        self.seen.assign_add(tf.cast(tf.shape(x)[0], "float32"))
        self.calls.assign_add(1.0)
        return tf.nn.relu(x * self.scale + self.shift)


def _x(batch=32, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.normal(size=(batch, 5, 5, 2)).astype("float32"))


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("scale_at", ["inference", "train"])
def test_sample_skip_equals_mask_form_bit_for_bit(scale_at, identity):
    """Same name, seed and branch: sample_skip gives exactly the mask form's outputs.

    ``identity``: no shortcut argument (the shortcut is the input itself); otherwise an explicit
    shortcut tensor.
    """
    branch = RecordingBranch()
    kw = dict(mode="sample", scale_at=scale_at, seed=4, name="blk")
    skip = sdl.StochasticResidual(branch, 0.6, sample_skip=True, **kw)
    mask = sdl.StochasticResidual(branch, 0.6, **kw)
    x = _x()
    s = x if identity else x * 0.5 - 1.0
    shortcut = None if identity else s
    skip(x, shortcut=shortcut), mask(x, shortcut=shortcut)  # build
    f_skip = tf.function(lambda x: skip(x, shortcut=shortcut, training=True))
    f_mask = tf.function(lambda x: mask(x, shortcut=shortcut, training=True))
    kept_total = 0.0
    for _ in range(6):
        seen0 = float(branch.seen.numpy())
        y_skip = f_skip(x).numpy()
        n_kept = float(branch.seen.numpy()) - seen0
        kept_total += n_kept
        y_mask = f_mask(x).numpy()
        np.testing.assert_array_equal(y_skip, y_mask)
        assert float(skip.keep_rate.numpy()) == float(mask.keep_rate.numpy())
        # The branch ran on the kept examples only.
        assert n_kept == round(float(skip.keep_rate.numpy()) * 32)
        dropped = np.all(y_skip == s.numpy(), axis=(1, 2, 3))
        # Dropped examples get exactly the shortcut (a kept one differs: the branch is not 0).
        assert dropped.sum() == 32 - n_kept
    assert 0 < kept_total < 6 * 32
    # Inference runs the whole batch through the branch, as the mask form.
    np.testing.assert_array_equal(
        skip(x, shortcut=shortcut).numpy(), mask(x, shortcut=shortcut).numpy()
    )


def test_sample_skip_drop_frequency_within_4_sigma():
    p, batch, steps = 0.7, 256, 8
    layer = sdl.StochasticResidual(
        RecordingBranch(), p, mode="sample", sample_skip=True, seed=1, name="f"
    )
    x = _x(batch)
    fn = tf.function(lambda x: layer(x, shortcut=tf.zeros_like(x), training=True))
    kept = []
    for _ in range(steps):
        y = fn(x).numpy()
        kept.append(np.any(y != 0.0, axis=(1, 2, 3)))
    kept = np.concatenate(kept)
    assert abs(kept.mean() - p) < 4 * math.sqrt(p * (1 - p) / kept.size)


@pytest.mark.parametrize("graph", [False, True])
def test_sample_skip_gradients_of_dropped_examples_skip_the_branch(graph):
    """Also inside tf.function, where switch_case's gradient once failed on IndexedSlices."""
    branch = RecordingBranch()
    layer = sdl.StochasticResidual(branch, 0.5, mode="sample", sample_skip=True, seed=2, name="g")
    mask = sdl.StochasticResidual(branch, 0.5, mode="sample", seed=2, name="g")
    x = _x(16)
    w = tf.constant(np.random.default_rng(5).normal(size=(16, 5, 5, 2)).astype("float32"))
    layer(x), mask(x)  # build

    def grads_fn(lay, only_dropped):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = lay(x, training=True)
            dropped = tf.cast(tf.reduce_all(tf.equal(y, x), axis=[1, 2, 3]), "float32")
            weight = dropped[:, None, None, None] if only_dropped else 1.0
            loss = tf.reduce_sum(y * w * weight)
        gx, *gv = tape.gradient(loss, [x, *branch.trainable_variables])
        return dropped, gx, gv

    fns = {}

    def grads(lay, only_dropped):
        key = (lay.sample_skip, only_dropped)
        if key not in fns:
            fn = lambda: grads_fn(lay, only_dropped)  # noqa: E731
            fns[key] = tf.function(fn) if graph else fn
        step = int(lay.step.numpy())
        dropped, gx, gv = fns[key]()
        lay.step.assign(step)
        return dropped.numpy(), gx.numpy(), gv

    for _ in range(4):
        dropped, gx, gv = grads(layer, only_dropped=True)
        assert 0 < dropped.sum() < 16
        # A loss on the dropped examples only: nothing reaches the branch's weights, and their
        # input gradient is the shortcut's alone (identity shortcut: exactly w).
        assert all(float(tf.reduce_max(tf.abs(g))) == 0.0 for g in gv)
        np.testing.assert_array_equal(gx[dropped > 0], w.numpy()[dropped > 0])
        np.testing.assert_array_equal(gx[dropped == 0], 0.0 * gx[dropped == 0])
        # The full loss: the same gradients as the mask form (sums over fewer zero terms).
        _, gx_skip, gv_skip = grads(layer, only_dropped=False)
        _, gx_mask, gv_mask = grads(mask, only_dropped=False)
        np.testing.assert_allclose(gx_skip, gx_mask, rtol=1e-6, atol=1e-6)
        for a, b in zip(gv_skip, gv_mask):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
        layer.step.assign_add(1)
        mask.step.assign_add(1)


@pytest.mark.parametrize("case", ["all_kept", "all_dropped"])
def test_sample_skip_fast_paths(case):
    """Batch of one: every step is either all kept (plain sum) or all dropped (the shortcut)."""
    branch = RecordingBranch()
    layer = sdl.StochasticResidual(branch, 0.5, mode="sample", sample_skip=True, seed=9, name="h")
    x = _x(1)
    layer(x)  # build
    fn = tf.function(lambda x: layer(x, training=True))
    seen = set()
    for _ in range(40):
        calls0 = float(branch.calls.numpy())
        y = fn(x).numpy()
        kept = float(layer.keep_rate.numpy()) == 1.0
        seen.add(kept)
        ran = float(branch.calls.numpy()) - calls0
        if kept:
            assert ran == 1.0
            np.testing.assert_array_equal(y, (x + branch(x)).numpy())
        else:
            assert ran == 0.0  # the branch was not run at all
            np.testing.assert_array_equal(y, x.numpy())
    assert seen == {True, False}
    # A full batch with p near 1 or the 1-example batch covers each path; check the chosen one.
    p = 0.999999 if case == "all_kept" else 1e-6
    big = sdl.StochasticResidual(branch, p, mode="sample", sample_skip=True, seed=1, name="k")
    x = _x(8)
    calls0, seen0 = float(branch.calls.numpy()), float(branch.seen.numpy())
    y = big(x, training=True).numpy()
    if case == "all_kept":
        np.testing.assert_array_equal(y, (x + branch(x)).numpy())
        assert float(branch.seen.numpy()) - seen0 == 8.0 + 8.0  # the step + the reference call
    else:
        np.testing.assert_array_equal(y, x.numpy())
        assert float(branch.calls.numpy()) == calls0


def test_sample_skip_batchnorm_sees_only_kept_examples():
    """The documented semantic difference: BatchNorm statistics come from the kept examples."""
    bn = keras.layers.BatchNormalization(momentum=0.0)  # moving mean := last batch mean
    branch = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, use_bias=False), bn])
    layer = sdl.StochasticResidual(branch, 0.5, mode="sample", sample_skip=True, seed=3, name="bn")
    x = tf.constant(np.random.default_rng(4).normal(size=(64, 3)).astype("float32"))
    y = layer(x, training=True).numpy()
    kept = np.any(y != x.numpy(), axis=1)
    assert 0 < kept.sum() < 64
    pre_bn = branch.layers[0](x).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), pre_bn[kept].mean(0), rtol=1e-5, atol=1e-6)


def test_sample_skip_is_refused_under_xla():
    layer = sdl.StochasticResidual(
        RecordingBranch(), 0.5, mode="sample", sample_skip=True, seed=1, name="x"
    )
    assert layer.supports_jit is False
    x = _x(4)
    layer(x)
    with pytest.raises(ValueError, match="sample_skip=True.*XLA.*sample_skip=False"):
        tf.function(lambda x: layer(x, training=True), jit_compile=True)(x)
    # Without XLA (and at inference under XLA) it runs.
    tf.function(lambda x: layer(x, training=True))(x)
    tf.function(lambda x: layer(x, training=False), jit_compile=True)(x)
    # Keras' jit_compile="auto" does not pick XLA for a model holding it.
    inp = keras.Input((5, 5, 2))
    model = keras.Model(inp, layer(inp))
    from keras.src.trainers.trainer import model_supports_jit

    assert not model_supports_jit(model)


def test_sample_skip_config_and_keras_round_trip(tmp_path):
    branch_in = keras.Input((5, 5, 2))
    branch = keras.Model(branch_in, keras.layers.Conv2D(2, 3, padding="same")(branch_in))
    inp = keras.Input((5, 5, 2))
    layer = sdl.StochasticResidual(branch, 0.5, mode="sample", sample_skip=True, seed=2, name="r")
    model = keras.Model(inp, layer(inp))
    assert layer.get_config()["sample_skip"] is True
    x = _x(16)
    model(x, training=True)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("r").sample_skip is True
    np.testing.assert_array_equal(model(x).numpy(), loaded(x).numpy())
    for _ in range(3):
        np.testing.assert_array_equal(
            model(x, training=True).numpy(), loaded(x, training=True).numpy()
        )


def test_sample_skip_bad_arguments_and_builders():
    with pytest.raises(ValueError, match="mode='sample' only"):
        sdl.StochasticResidual(keras.layers.Dense(2), 0.5, sample_skip=True)
    with pytest.raises(ValueError, match="sample_skip must be a bool"):
        sdl.StochasticResidual(keras.layers.Dense(2), 0.5, mode="sample", sample_skip=1)
    with pytest.raises(ValueError, match="sample_skip=True needs sd_mode='sample'"):
        create_model("cifar_resnet20", num_classes=10, width=0.25, sample_skip=True)
    with pytest.raises(ValueError, match="sync_bn=True with skipping"):
        create_model(
            "cifar_resnet20",
            num_classes=10,
            width=0.25,
            sd_mode="sample",
            sample_skip=True,
            sync_bn=True,
        )
    # The builders' defaults: the cifar_resnet builder on the registered test_resnet; B0 itself
    # for EfficientNet, depth 0.34 (10 blocks, 3 of them gated residuals) to build faster:
    # test_efficientnet has one block per stage, so no residual to gate.
    res = create_model("test_resnet", num_classes=10, sd_mode="sample")
    from tfsd.models import resnet

    flags = {lay.sample_skip for lay in sdl.stochastic_depth_layers(res)}
    assert flags == {resnet.SAMPLE_SKIP_DEFAULT}
    mask = create_model("test_resnet", num_classes=10, sd_mode="sample", sample_skip=False)
    assert {lay.sample_skip for lay in sdl.stochastic_depth_layers(mask)} == {False}
    kw = dict(num_classes=10, width=0.25, depth=0.34, input_shape=(32, 32, 3))
    eff = create_model("efficientnet_b0", **kw)
    assert {lay.sample_skip for lay in sdl.stochastic_depth_layers(eff)} == {False}
    eff = create_model("efficientnet_b0", sample_skip=True, **kw)
    assert {lay.sample_skip for lay in sdl.stochastic_depth_layers(eff)} == {True}


def test_sample_skip_trains_a_cifar_resnet_in_a_tf_function():
    """A full training step of a tiny CIFAR ResNet (pad shortcuts, BatchNorm) with sample_skip.

    The registered test_resnet (ResNet-8 at 16x16: 3 blocks, two with pad shortcuts).
    Caught: with ``tf.gather_nd`` for the kept rows, GatherNd's ``IndexedSlices`` gradient could
    not be merged with the dense gradients of the other ``switch_case`` branches (TypeError).
    """
    model = create_model("test_resnet", num_classes=10, sd_mode="sample", sample_skip=True)
    opt = keras.optimizers.SGD(0.01)
    opt.build(model.trainable_variables)
    x = tf.random.stateless_uniform([8, 16, 16, 3], seed=[0, 1], maxval=255.0)
    y = tf.constant(np.arange(8) % 10)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            )
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    before = model.trainable_variables[0].numpy().copy()
    sd = sdl.stochastic_depth_layers(model)
    rates = []
    for _ in range(3):
        assert np.isfinite(float(step()))
        rates += [float(lay.keep_rate.numpy()) for lay in sd]
    assert not np.array_equal(before, model.trainable_variables[0].numpy())
    assert 0.0 < np.mean(rates) < 1.0


def test_sample_skip_min_drop_selects_blocks_by_drop_probability():
    """``sample_skip_min_drop`` skips exactly the blocks with 1 - p_l >= it; others mask.

    cifar_resnet20 has L = 9 blocks at p_L = 0.5 linear: 1 - p_l = l / 18, so 0.17 (> 3/18)
    keeps blocks 1-3 (the first stage) in the mask form and skips blocks 4-9. Gates do not
    depend on the form: the mixed model draws the same keep decisions as the all-skip one.
    """
    kw = dict(num_classes=10, width=0.25, input_shape=(16, 16, 3), sd_mode="sample")
    mixed = create_model("cifar_resnet20", sample_skip=True, sample_skip_min_drop=0.17, **kw)
    layers = sdl.stochastic_depth_layers(mixed)
    drops = [1.0 - lay.survival_prob for lay in layers]
    np.testing.assert_allclose(drops, np.arange(1, 10) / 18)
    assert [lay.sample_skip for lay in layers] == [False] * 3 + [True] * 6
    assert layers[3].name.startswith("conv3_block1")
    # Without sample_skip the threshold changes nothing; 0.0 skips everywhere.
    plain = create_model("cifar_resnet20", sample_skip_min_drop=0.17, **kw)
    assert {lay.sample_skip for lay in sdl.stochastic_depth_layers(plain)} == {False}
    every = create_model("cifar_resnet20", sample_skip=True, **kw)
    assert {lay.sample_skip for lay in sdl.stochastic_depth_layers(every)} == {True}
    every.set_weights(mixed.get_weights())
    x = tf.random.stateless_uniform([8, 16, 16, 3], seed=[0, 2], maxval=255.0)
    # Inference is the same function whichever form trains.
    np.testing.assert_allclose(mixed(x).numpy(), every(x).numpy(), rtol=1e-5, atol=1e-5)
    for _ in range(2):
        mixed(x, training=True)
        every(x, training=True)
        rates = [[float(lay.keep_rate.numpy()) for lay in sdl.stochastic_depth_layers(m)]
                 for m in (mixed, every)]  # fmt: skip
        assert rates[0] == rates[1]
    for bad in (-0.1, 1.0, True, "0.1"):
        with pytest.raises(ValueError, match="sample_skip_min_drop must be a number in"):
            create_model("cifar_resnet20", sample_skip=True, sample_skip_min_drop=bad, **kw)
