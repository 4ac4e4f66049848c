"""Tests of tfsd.models.resnet: parameter counts, schedules, compute skipping, dtypes, saving."""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsd.models.resnet as resnet  # registers the ResNets
from tests.helpers import op_types
from tests.helpers import randomize_batchnorm as helpers_randomize_bn
from tfsd import layers as sdl
from tfsd.models import common, create_model, get_builder, list_models

RESNETS = sorted(n for n in list_models() if get_builder(n).func.__module__ == resnet.__name__)
# Full-depth graphs: CIFAR ResNet-1202 takes ~18 s to build on 2 CPU cores, the others 3-5 s
# even at tiny widths. Every full-width parameter count is slow too (FULL_SIZE_COUNTS).
SLOW = {"cifar_resnet152", "cifar_resnet1202", "resnet101", "resnet152"}
CIFAR_DEPTHS = {
    "test_resnet": 8,  # the registered tiny model: ResNet-8 at width 0.25, 16×16
    "cifar_resnet20": 20,
    "cifar_resnet32": 32,
    "cifar_resnet44": 44,
    "cifar_resnet56": 56,
    "cifar_resnet110": 110,
    "cifar_resnet152": 152,
    "cifar_resnet1202": 1202,
}
IMAGENET_BLOCKS = {"resnet18": 8, "resnet34": 16, "resnet50": 16, "resnet101": 33, "resnet152": 50}


# The ImageNet ResNets' full-width builds (11-60 M parameters) and the deep CIFAR ones; the small
# CIFAR ResNets (≤ 1.7 M parameters) and the tiny test model count in the default tier.
FULL_SIZE_COUNTS = SLOW | set(IMAGENET_BLOCKS)
# 8×8 is the smallest input of the CIFAR ResNets' three stages (8, 4, 2); parameter counts do not
# depend on it (global pooling), and the full-width ResNet-1202 forward pass costs 16× less.
SMALL_CIFAR_INPUT = (8, 8, 3)


# ResNet-1202 is built once, in test_cifar_resnet1202_full_size (each build costs ~18 s and
# xdist workers share no cache): the parametrized tests below leave it out.
ONE_BUILD = "cifar_resnet1202"


def _params(slow_names=SLOW):
    return [
        pytest.param(n, marks=pytest.mark.slow) if n in slow_names else n
        for n in RESNETS
        if n != ONE_BUILD
    ]


def _is_cifar(name):
    return name in CIFAR_DEPTHS


def _count(weights):
    return int(sum(math.prod(w.shape) for w in weights))


def _num_blocks(name):
    if _is_cifar(name):
        return 3 * (CIFAR_DEPTHS[name] - 2) // 6
    return IMAGENET_BLOCKS[name]


def _tiny_kwargs(name):
    """Tiny but complete: every block and shortcut type, ImageNet models at 32×32."""
    if name == "test_resnet":
        return dict(num_classes=10)  # already tiny
    if name.startswith("cifar"):
        return dict(num_classes=10, width=0.25)
    return dict(num_classes=7, width=0.125, input_shape=(32, 32, 3))


@functools.cache
def _cached(name, **kwargs):
    # Shared across tests: nothing below mutates architecture, only steps and BN statistics.
    return create_model(name, **kwargs)


def _tiny(name):
    return _cached(name, **_tiny_kwargs(name))


def _images(n=4, size=32, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _branch_bns(block):
    return [x for x in block.branch.layers if isinstance(x, keras.layers.BatchNormalization)]


# -------------------------------------------------------------------------------------------------
# Parameter counts (full size, build only).
# -------------------------------------------------------------------------------------------------

# (trainable, non-trainable) of the default build. Trainable ImageNet counts equal torchvision's.
# Non-trainable: BN moving mean/variance, the Normalization layer's mean/variance/count (7) and,
# per stochastic block, its int64 ``sd_step`` and float ``sd_keep_rate`` (2 per block).
COUNTS = {
    "cifar_resnet20": (269_722, 1_401),
    "cifar_resnet32": (464_154, 2_309),
    "cifar_resnet44": (658_586, 3_217),
    "cifar_resnet56": (853_018, 4_125),
    "cifar_resnet110": (1_727_962, 8_211),
    "cifar_resnet152": (2_408_474, 11_389),  # n = 25, the paper's SVHN network
    "cifar_resnet1202": (19_421_274, 90_839),
    # Hand-computed: convs 108 + 144·2 + (288 + 576) + (1152 + 2304), BN γ/β 2·(4·3 + 8·2 + 16·2),
    # head 16·10 + 10; moving statistics 120, Normalization 7, SD 2·3.
    "test_resnet": (5_006, 133),
    "resnet18": (11_689_512, 9_623),
    "resnet34": (21_797_672, 17_063),
    "resnet50": (25_557_032, 53_159),
    "resnet101": (44_549_160, 105_417),
    "resnet152": (60_192_808, 151_531),
}


def _assert_counts(model, name):
    trainable, non_trainable = COUNTS[name]
    assert _count(model.trainable_weights) == trainable
    assert _count(model.non_trainable_weights) == non_trainable
    assert model.count_params() == trainable + non_trainable


def test_every_registered_resnet_has_pinned_counts():
    assert sorted(COUNTS) == RESNETS


@pytest.mark.parametrize("name", _params(FULL_SIZE_COUNTS))
def test_parameter_counts(name):
    num_classes = 10 if _is_cifar(name) else 1000
    model = create_model(name, num_classes=num_classes)
    assert model.name == name
    _assert_counts(model, name)
    trainable, non_trainable = COUNTS[name]
    # Without stochastic depth only the 2 per-block counters disappear.
    if name in ("cifar_resnet110", "resnet50"):
        plain = create_model(name, num_classes=num_classes, survival_prob=1.0)
        assert _count(plain.trainable_weights) == trainable
        assert _count(plain.non_trainable_weights) == non_trainable - 2 * _num_blocks(name)


def test_no_conv_bias_and_torch_padding():
    model = create_model("resnet50", num_classes=10, width=0.125, input_shape=(64, 64, 3))
    convs = [x for x in model._flatten_layers() if isinstance(x, keras.layers.Conv2D)]
    assert len(convs) == 53 and not any(c.use_bias for c in convs)
    # v1.5: the stride is on the bottleneck's 3×3 conv, padded 1 on every side as in Torch.
    branch = model.get_layer("conv3_block1_drop").branch
    assert branch.get_layer("conv3_block1_2_conv").strides == (2, 2)
    assert branch.get_layer("conv3_block1_1_conv").strides == (1, 1)
    assert branch.get_layer("conv3_block1_2_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("conv1_pad").padding == ((3, 3), (3, 3))
    assert model.get_layer("pool1_pad").padding == ((1, 1), (1, 1))
    assert model.get_layer("conv3_block1_0_conv").strides == (2, 2)  # projection shortcut
    # 64 → 32 (stem) → 16 (pool) → 16, 8, 4, 2: Torch's output sizes.
    assert model.get_layer("conv5_block3_out").output.shape[1:3] == (2, 2)


def test_cifar_shortcut_is_even_subsample_with_zero_channels_appended():
    model = _tiny("cifar_resnet20")  # channels 4 / 8 / 16
    before = model.get_layer("conv2_block3_out").output
    shortcut = model.get_layer("conv3_block1_0_zeropad").output
    probe = keras.Model(model.input, [before, shortcut])
    x, s = (t.numpy() for t in probe(_images(2), training=False))
    assert s.shape == (2, 16, 16, 8)
    np.testing.assert_array_equal(s[..., :4], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(s[..., 4:], 0.0)


# -------------------------------------------------------------------------------------------------
# Every registered ResNet: tiny forward pass and stochastic-depth schedule.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _params())
def test_tiny_forward(name):
    model = _tiny(name)
    x = _images(2, model.input_shape[1]).round()
    train = model(x, training=True)
    num_classes = _tiny_kwargs(name)["num_classes"]
    assert train.shape == (2, num_classes) and train.dtype == tf.float32
    assert np.all(np.isfinite(train.numpy()))
    infer = model(x, training=False)
    assert infer.shape == (2, num_classes) and infer.dtype == tf.float32
    # uint8 images are cast to float by the model: same logits.
    np.testing.assert_allclose(model(x.astype("uint8"), training=False), infer, rtol=1e-6)


@pytest.mark.parametrize("name", _params())
def test_survival_rates_follow_paper_linear_rule(name):
    _assert_linear_rates(_tiny(name), name)


def _assert_linear_rates(model, name):
    blocks = sdl.stochastic_depth_layers(model)
    num_blocks = _num_blocks(name)
    assert len(blocks) == num_blocks
    assert all(isinstance(b, sdl.StochasticResidual) for b in blocks)
    assert all(b.mode == "batch" and b.scale_at == "inference" for b in blocks)
    p_last = 0.5 if _is_cifar(name) else 0.8
    rates = [b.survival_prob for b in blocks]
    assert rates[0] == pytest.approx(1 - (1 - p_last) / num_blocks, abs=1e-12)
    assert rates[-1] == pytest.approx(p_last, abs=1e-12)
    expected = [1 - (i / num_blocks) * (1 - p_last) for i in range(1, num_blocks + 1)]
    np.testing.assert_allclose(rates, expected, atol=1e-12)
    # Blocks in network order, the down-sampling ones included, each with its own seed.
    assert blocks[0].name == "conv2_block1_drop"
    assert blocks[-1].name.startswith("conv4_" if _is_cifar(name) else "conv5_")
    assert [b.seed for b in blocks] == [common.block_seed(0, i) for i in range(num_blocks)]


@pytest.mark.slow
def test_cifar_resnet1202_full_size():
    """ResNet-1202, built once (~18 s): counts, linear rates, a mixed_bfloat16 training pass.

    The build is under mixed_bfloat16 so that the one build also covers test_zoo's dtype checks
    (test_zoo leaves ResNet-1202 out: its blocks are ResNet-110's, 10× more of them, and
    cifar_resnet110 runs both policies there). Weights stay float32, so the counts are the
    float32 build's. Inference is not run: untrained, 600 blocks at inference (BN moving variance
    1) overflow even float32 — training mode is the meaningful check.
    """
    keras.mixed_precision.set_global_policy("mixed_bfloat16")  # conftest resets it
    model = create_model(ONE_BUILD, num_classes=10, input_shape=SMALL_CIFAR_INPUT)
    _assert_counts(model, ONE_BUILD)
    _assert_linear_rates(model, ONE_BUILD)
    convs = [c for c in model._flatten_layers() if isinstance(c, keras.layers.Conv2D)]
    assert len(convs) == 1201 and all(c.compute_dtype == "bfloat16" for c in convs)
    assert all(w.dtype == "float32" for w in model.weights if w.dtype.startswith("float"))
    train = model(_images(2, SMALL_CIFAR_INPUT[0]).round(), training=True)
    assert train.shape == (2, 10) and train.dtype == tf.float32
    assert np.all(np.isfinite(train.numpy()))


def test_cifar110_rates_match_paper_code():
    """ResNet-110: L = 54 (down-sampling blocks counted), first 1 − 0.5/54, expected depth."""
    rates = sdl.survival_schedule(54, 0.5)
    model = _tiny("cifar_resnet110")
    got = [b.survival_prob for b in sdl.stochastic_depth_layers(model)]
    np.testing.assert_allclose(got, rates, atol=1e-12)
    assert got[0] == pytest.approx(1 - 0.5 / 54)
    assert got[18] == pytest.approx(1 - 19 / 54 * 0.5)  # conv3_block1: a down-sampling block
    assert sum(got) == pytest.approx((3 * 54 - 1) / 4, abs=0.3)  # paper: ≈ (3L − 1) / 4


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18", "resnet50"])
def test_survival_one_builds_plain_resnet(name):
    kwargs = _tiny_kwargs(name)
    model = create_model(name, survival_prob=1.0, **kwargs)
    flat = list(model._flatten_layers())
    assert not any(isinstance(layer, sdl.StochasticDepth) for layer in flat)
    assert not any(isinstance(layer, keras.Model) for layer in flat[1:])  # no branch sub-models
    adds = [layer for layer in flat if isinstance(layer, keras.layers.Add)]
    assert len(adds) == _num_blocks(name)
    assert _count(model.trainable_weights) == _count(_tiny(name).trainable_weights)
    # No random op even in the training graph, and repeated training calls agree.
    spec = tf.TensorSpec([2, 32, 32, 3])
    assert not any("Random" in t for t in op_types(lambda x: model(x, training=True), spec))
    x = _images(2)
    np.testing.assert_array_equal(model(x, training=True), model(x, training=True))


def test_uniform_rule_and_sample_mode():
    model = create_model(
        "cifar_resnet20",
        num_classes=10,
        width=0.25,
        rule="uniform",
        survival_prob=0.7,
        sd_mode="sample",
        sd_scale_at="train",
    )
    blocks = sdl.stochastic_depth_layers(model)
    assert [b.survival_prob for b in blocks] == [0.7] * 9
    assert all(b.mode == "sample" and b.scale_at == "train" for b in blocks)
    assert np.all(np.isfinite(model(_images(4), training=True).numpy()))


def test_zero_init_residual_zeroes_last_bn_gamma_only():
    model = create_model("resnet50", num_classes=10, width=0.125, zero_init_residual=True)
    for block in sdl.stochastic_depth_layers(model):
        gammas = {b.name: b.gamma.numpy() for b in _branch_bns(block)}
        last = [n for n in gammas if n.endswith("_3_bn")]
        assert len(last) == 1 and np.all(gammas.pop(last[0]) == 0)
        assert all(np.all(g == 1) for g in gammas.values())
    plain = create_model(
        "resnet18",
        num_classes=10,
        width=0.125,
        survival_prob=1.0,
        zero_init_residual=True,
        input_shape=(32, 32, 3),
    )
    assert np.all(plain.get_layer("conv2_block1_2_bn").gamma.numpy() == 0)


# -------------------------------------------------------------------------------------------------
# Training: loss falls, and dropped blocks are really skipped inside the model.
# -------------------------------------------------------------------------------------------------


def _toy_data(n=64, seed=1):
    """Four classes: which image quadrant is bright. Learnable in a few steps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 60, (n, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 4, n)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * 16 : (r + 1) * 16, col * 16 : (col + 1) * 16] += 180
    return x, y.astype("int32")


def test_tiny_cifar_resnet20_trains_and_loss_falls():
    keras.utils.set_random_seed(0)
    model = create_model("cifar_resnet20", num_classes=4, width=0.5, seed=3)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _toy_data()
    history = model.fit(x, y, batch_size=16, epochs=6, shuffle=False, verbose=0)
    losses = history.history["loss"]  # observed: 1.52, 1.13, 0.77, 0.35, 0.37, 0.19
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0]
    # Every block's counter advanced once per training step (4 steps × 6 epochs).
    assert all(int(b.step.numpy()) == 24 for b in sdl.stochastic_depth_layers(model))


def test_dropped_blocks_are_skipped_in_compiled_train_step():
    model = create_model(
        "cifar_resnet20", num_classes=4, width=0.5, rule="uniform", survival_prob=0.5, seed=0
    )
    blocks = sdl.stochastic_depth_layers(model)
    x, y = _toy_data(16)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables

    @tf.function
    def grads_of_step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return tape.gradient(loss, variables)

    stats = {b.name: [v.numpy() for v in b.branch.non_trainable_variables] for b in blocks}
    grads = grads_of_step(x, y)
    grad_of = {id(v): g for v, g in zip(variables, grads, strict=True)}
    kept = [b for b in blocks if float(b.keep_rate.numpy()) == 1.0]
    dropped = [b for b in blocks if float(b.keep_rate.numpy()) == 0.0]
    assert len(kept) + len(dropped) == 9
    assert kept and dropped, "seed 0 should keep some and drop some of the 9 blocks"
    for b in blocks:
        assert len(_branch_bns(b)) == 2 and len(stats[b.name]) == 4  # 2 BNs × (mean, variance)
        branch_grads = [grad_of[id(v)] for v in b.branch.trainable_variables]
        assert len(branch_grads) == 6  # 2 kernels + 2 × (gamma, beta)
        new_stats = [v.numpy() for v in b.branch.non_trainable_variables]
        if b in dropped:
            # Zero, not merely small: the branch never ran (graph mode gives zeros, not None).
            assert all(g is not None and not np.any(g.numpy()) for g in branch_grads)
            for old, new in zip(stats[b.name], new_stats, strict=True):
                np.testing.assert_array_equal(old, new)
        else:
            assert all(g is not None and np.any(g.numpy()) for g in branch_grads)
            assert all(
                not np.array_equal(o, n) for o, n in zip(stats[b.name], new_stats, strict=True)
            )


def test_jit_compiled_train_step():
    model = create_model("cifar_resnet20", num_classes=4, width=0.25)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    x, y = _toy_data(16)
    kernel = model.get_layer("predictions").kernel.numpy()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert not np.array_equal(kernel, model.get_layer("predictions").kernel.numpy())
    assert all(int(b.step.numpy()) == 2 for b in sdl.stochastic_depth_layers(model))


# -------------------------------------------------------------------------------------------------
# Mixed precision, saving.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18"])
def test_mixed_precision_forward_gives_float32_logits(name, policy):
    kwargs = _tiny_kwargs(name)
    reference = create_model(name, **kwargs)
    keras.mixed_precision.set_global_policy(policy)
    model = create_model(name, **kwargs)
    compute_dtype = policy.split("_")[1]
    assert model.get_layer("conv1_conv").compute_dtype == compute_dtype
    assert all(b.compute_dtype == compute_dtype for b in sdl.stochastic_depth_layers(model))
    assert model.get_layer("conv1_conv").kernel.dtype == "float32"  # float32 master weights
    model.set_weights(reference.get_weights())
    x = _images(4)
    y = model(x, training=False)
    assert y.dtype == tf.float32
    expected = reference(x, training=False).numpy()
    # Observed relative errors: ~1e-3 (float16), ~1e-2 (bfloat16, 8-bit mantissa).
    tol = 1e-2 if policy == "mixed_float16" else 5e-2
    assert np.abs(y.numpy() - expected).max() <= tol * np.abs(expected).max()
    # Training mode is not compared: batch statistics of 4 tiny images amplify rounding.
    y = model(x, training=True)
    assert y.dtype == tf.float32 and np.all(np.isfinite(y.numpy()))


@pytest.mark.parametrize("name", ["cifar_resnet20", "resnet18"])
def test_keras_round_trip_same_outputs(name, tmp_path):
    model = create_model(name, **_tiny_kwargs(name))
    x = _images(4)
    model(x, training=True)  # advance every block's step: the saved model must continue it
    path = str(tmp_path / f"{name}.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.name == name
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)
    # Training mode: same step, same gates, same batch statistics.
    for _ in range(3):
        np.testing.assert_allclose(loaded(x, training=True), model(x, training=True), atol=1e-5)
    steps = [int(b.step.numpy()) for b in sdl.stochastic_depth_layers(loaded)]
    assert steps == [4] * _num_blocks(name)


def test_channel_zero_pad_config_round_trip():
    layer = resnet.ChannelZeroPad(6, name="pad")
    config = layer.get_config()
    assert config["channels"] == 6 and config["name"] == "pad"
    clone = resnet.ChannelZeroPad.from_config(config)
    x = np.arange(8, dtype="float32").reshape(1, 2, 2, 2)
    np.testing.assert_array_equal(clone(x)[..., :2], x)
    np.testing.assert_array_equal(clone(x)[..., 2:], 0)
    with pytest.raises(ValueError, match="cannot pad"):
        resnet.ChannelZeroPad(1)(x)
    # akamaster's placement: pad // 2 zero channels before, the rest after.
    symmetric = resnet.ChannelZeroPad(6, "symmetric", name="sym")
    config = symmetric.get_config()
    assert config["placement"] == "symmetric"
    y = resnet.ChannelZeroPad.from_config(config)(x)
    np.testing.assert_array_equal(y[..., 2:4], x)
    np.testing.assert_array_equal(y[..., :2], 0)
    np.testing.assert_array_equal(y[..., 4:], 0)
    with pytest.raises(ValueError, match="placement"):
        resnet.ChannelZeroPad(6, "before")


# -------------------------------------------------------------------------------------------------
# Feature extractors (include_top=False).
# -------------------------------------------------------------------------------------------------


def _copy_by_layer_name(source, target):
    for layer in target.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())


@pytest.mark.parametrize(
    "name, kwargs, channels, size",
    [
        ("cifar_resnet20", dict(width=0.25), 16, 8),
        ("resnet18", dict(width=0.25, input_shape=(32, 32, 3)), 128, 1),
        ("resnet50", dict(width=0.125, input_shape=(64, 64, 3)), 256, 2),
    ],
)
def test_feature_extractor_shapes_and_penultimate_features(name, kwargs, channels, size):
    top = create_model(name, num_classes=7, **kwargs)
    helpers_randomize_bn(top)
    x = _images(2, kwargs.get("input_shape", (32,))[0])
    penultimate = keras.Model(top.input, top.get_layer("avg_pool").output)(x, training=False)
    last_map = keras.Model(top.input, top.get_layer("avg_pool").input)(x, training=False)
    for pooling, shape, want in [
        (None, (None, size, size, channels), last_map),
        ("avg", (None, channels), penultimate),
        ("max", (None, channels), np.max(last_map, axis=(1, 2))),
    ]:
        features = create_model(name, num_classes=7, include_top=False, pooling=pooling, **kwargs)
        assert features.output_shape == shape
        assert "predictions" not in {lay.name for lay in features.layers}
        _copy_by_layer_name(top, features)
        np.testing.assert_allclose(features(x, training=False), want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # full-size ResNet-18 and ResNet-110 builds
def test_feature_extractor_parameter_counts():
    # torchvision resnet18 without its fc (512 × 1000 + 1000): 11,689,512 − 513,000.
    features = create_model("resnet18", num_classes=1000, include_top=False, pooling="avg")
    assert _count(features.trainable_weights) == 11_176_512
    assert _count(features.non_trainable_weights) == COUNTS["resnet18"][1]
    cifar = create_model("cifar_resnet110", num_classes=10, include_top=False)
    assert _count(cifar.trainable_weights) == COUNTS["cifar_resnet110"][0] - (64 * 10 + 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pooling="mean", include_top=False), "pooling must be one of"),
        (dict(pooling="avg"), "include_top=False"),
        (dict(include_top=0), "include_top must be a bool"),
    ],
)
def test_bad_head_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("cifar_resnet20", num_classes=10, **kwargs)


# -------------------------------------------------------------------------------------------------
# Bad arguments.
# -------------------------------------------------------------------------------------------------


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"Did you mean: .*resnet50"):
        create_model("resnet05", num_classes=10)
    with pytest.raises(ValueError, match=r"Did you mean: .*cifar_resnet110"):
        create_model("cifar_resnet_110", num_classes=10)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(width=0), "width"),
        (dict(width=-0.5), "width"),
        (dict(width=float("nan")), "width"),
        (dict(width="1"), "width"),
        (dict(survival_prob=0.0), "final_survival"),
        (dict(survival_prob=1.5), "final_survival"),
        (dict(sd_mode="layer"), "sd_mode"),
        (dict(sd_scale_at="test"), "sd_scale_at"),
        (dict(rule="exponential"), "rule"),
        (dict(bn_momentum=1.5), "bn_momentum"),
        (dict(input_shape=(32, 32)), "input_shape"),
        (dict(input_shape=(32, 32, 1)), "one value per channel"),
        (dict(sync_bn=True), "sync_replicas"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("cifar_resnet20", num_classes=10, **kwargs)


def test_bad_architecture_arguments():
    with pytest.raises(ValueError, match="6n"):
        resnet.cifar_resnet(name="x", depth=21, num_classes=10)
    with pytest.raises(ValueError, match="4 stages"):
        resnet.resnet(name="x", block="basic", blocks=(2, 2, 2), num_classes=10)
    with pytest.raises(ValueError, match="block"):
        resnet.resnet(name="x", block="wide", blocks=(2, 2, 2, 2), num_classes=10)
    # Cross-replica BN is fine when every replica draws the same gates.
    model = create_model(
        "cifar_resnet20", num_classes=10, width=0.25, sync_bn=True, sync_replicas=True
    )
    assert all(b.sync_replicas for b in sdl.stochastic_depth_layers(model))
