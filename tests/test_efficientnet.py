"""EfficientNet-B0…B7 / Lite0…4: counts, schedule, keras.applications equivalence, importer."""

import math

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.legacy.saving import legacy_h5_format

import tfsd.models.efficientnet as effnet
from tfsd import layers as sd_layers
from tfsd.models import (
    create_model,
    list_models,
    load_keras_applications_weights,
    scale_branch_output,
)

B_NAMES = list(effnet.EFFICIENTNET)
LITE_NAMES = list(effnet.EFFICIENTNET_LITE)

# 1000 classes, survival_prob=1.0 (no stochastic-depth variables). B totals are keras.applications'
# (REFERENCES.md) and include BN moving statistics and the 7 Normalization variables; trainable B0
# is timm/torchvision's 5,288,548. Lite trainable counts round to timm's tf_efficientnet_lite0…4
# (4.65M, 5.42M, 6.09M, 8.20M, 13.01M); REFERENCES.md rounds Lite0 to 4.7M and Lite4 to 13.0M.
PARAMS = {  # name: (trainable, total)
    "efficientnet_b0": (5_288_548, 5_330_571),
    "efficientnet_b1": (7_794_184, 7_856_239),
    "efficientnet_b2": (9_109_994, 9_177_569),
    "efficientnet_b3": (12_233_232, 12_320_535),
    "efficientnet_b4": (19_341_616, 19_466_823),
    "efficientnet_b5": (30_389_784, 30_562_527),
    "efficientnet_b6": (43_040_704, 43_265_143),
    "efficientnet_b7": (66_347_960, 66_658_687),
    "efficientnet_lite0": (4_652_008, 4_694_031),
    "efficientnet_lite1": (5_416_680, 5_470_351),
    "efficientnet_lite2": (6_092_072, 6_150_175),
    "efficientnet_lite3": (8_197_096, 8_273_775),
    "efficientnet_lite4": (13_006_568, 13_118_943),
}
# The largest rows (5-10 s per build on 2 cores): their structure and counts are checked by
# `check_variant` on tests/test_zoo.py's full-size builds (slow tier), not by a build of their own.
# The other rows are checked in the default tier by test_forward_every_variant.
SLOW = {
    "efficientnet_b4",
    "efficientnet_b5",
    "efficientnet_b6",
    "efficientnet_b7",
    "efficientnet_lite4",
}


def _count(weights) -> int:
    return sum(int(np.prod(w.shape)) for w in weights)


def _tiny(**kwargs) -> keras.Model:
    """A B0 shrunk to 207k parameters at 32×32: 10 blocks, 3 of them residual (4b, 5b, 6b)."""
    kwargs.setdefault("input_shape", (32, 32, 3))
    return create_model("efficientnet_b0", num_classes=4, width=0.25, depth=0.34, **kwargs)


def _images(n, size, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _randomize(model, seed=0):
    """Random BN affines and input normalization, then BN statistics of a random batch.

    The statistics come from one training-mode pass with momentum 0 (variances floored at 0.01:
    late feature maps are 2×2, so 8 images give noisy ones), so activations stay O(1) and outputs
    depend on the input: a copy that misses a weight or the normalization shows.
    """
    rng = np.random.default_rng(seed)
    bns = [lay for lay in model.layers if isinstance(lay, keras.layers.BatchNormalization)]
    for layer in bns:
        n = layer.gamma.shape[0]
        layer.gamma.assign(rng.uniform(0.5, 1.5, n))
        layer.beta.assign(rng.normal(0, 0.2, n))
        layer.momentum = 0.0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Normalization):
            layer.adapt_mean.assign(rng.uniform(0.3, 0.6, 3))
            layer.adapt_variance.assign(rng.uniform(0.03, 0.08, 3))
            layer.finalize_state()
    model(_images(8, model.input_shape[1], seed=seed + 100), training=True)
    for layer in bns:
        layer.momentum = 0.99
        layer.moving_variance.assign(np.asarray(layer.moving_variance) + 0.01)
    return model


def _kapp(cls_name, seed=0, **kwargs):
    """A keras.applications model (weights=None) with randomised statistics, 64×64 by default."""
    kwargs.setdefault("input_shape", (64, 64, 3))
    kwargs.setdefault("classifier_activation", None)
    return _randomize(getattr(keras.applications, cls_name)(weights=None, **kwargs), seed)


@pytest.fixture(scope="module")
def kapp_b0():
    return _kapp("EfficientNetB0")


# -------------------------------------------------------------------------------------------------
# Architecture.
# -------------------------------------------------------------------------------------------------


def test_registry_and_rounding():
    assert set(B_NAMES + LITE_NAMES) <= set(list_models())
    assert len(B_NAMES) == 8 and len(LITE_NAMES) == 5
    # Nearest multiple of 8, bumped when rounding lost more than 10%.
    assert effnet.round_filters(32, 1.1) == 32  # 35.2 → 32 (≥ 31.7)
    assert effnet.round_filters(16, 1.2) == 24  # 19.2 → 16 < 17.3 → 24
    assert effnet.round_filters(1280, 2.0) == 2560
    assert effnet.round_repeats(2, 1.1) == 3 and effnet.round_repeats(4, 3.1) == 13


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b0", "efficientnet_lite0"])
def test_parameter_counts(name):
    """The published counts as built: 1000 classes, default resolution, no stochastic depth.

    One B and one Lite variant: every variant's counts less the head (whose size is exact
    arithmetic, checked here) are `check_variant`'s, on a 32×32 build with stochastic depth.
    """
    model = create_model(name, num_classes=1000, survival_prob=1.0)
    v = (effnet.EFFICIENTNET | effnet.EFFICIENTNET_LITE)[name]
    assert model.input_shape == (None, v.resolution, v.resolution, 3)
    assert model.name == name
    assert (_count(model.trainable_weights), model.count_params()) == PARAMS[name]
    assert sd_layers.stochastic_depth_layers(model) == []


def test_survival_schedule():
    # B0: N = 16 blocks; block i drops with 0.2·i/16, the last (7a, no skip) with 0.2·15/16.
    plan = effnet.block_plan(width=1.0, depth=1.0, fix_stem_head=False, survival_prob=0.8)
    assert len(plan) == 16
    assert [b.survival_prob for b in plan] == pytest.approx([1 - 0.2 * i / 16 for i in range(16)])
    assert plan[-1].survival_prob == pytest.approx(1 - 0.2 * 15 / 16)
    residual = [b.name for b in plan if b.residual]
    assert residual == [f"block{s}_" for s in "2b 3b 4b 4c 5b 5c 6b 6c 6d".split()]
    # B7: N counted after depth rounding, ceil(3.1·r) = 4 + 7 + 7 + 10 + 10 + 13 + 4 = 55.
    plan = effnet.block_plan(width=2.0, depth=3.1, fix_stem_head=False, survival_prob=0.8)
    assert len(plan) == 55 and plan[-1].name == "block7d_"
    assert plan[-1].survival_prob == pytest.approx(1 - 0.2 * 54 / 55)
    assert min(b.survival_prob for b in plan) > 0.8  # the late-block pitfall: never below 1 − r
    # Lite4: first and last stages keep one block: 1 + 4 + 4 + 6 + 6 + 8 + 1 = 30.
    plan = effnet.block_plan(width=1.4, depth=1.8, fix_stem_head=True, survival_prob=0.8)
    assert len(plan) == 30 and plan[0].name == "block1a_" and plan[-1].name == "block7a_"
    # The built B0 has one layer per residual block, with the plan's rate, per sample, inverted.
    model = create_model("efficientnet_b0", num_classes=10, input_shape=(32, 32, 3))
    plan = effnet.block_plan(width=1.0, depth=1.0, fix_stem_head=False, survival_prob=0.8)
    got = {lay.name: lay for lay in sd_layers.stochastic_depth_layers(model)}
    assert sorted(got) == sorted(f"{b.name}drop" for b in plan if b.residual)
    for b in plan:
        if b.residual:
            layer = got[f"{b.name}drop"]
            assert layer.survival_prob == pytest.approx(b.survival_prob)
            assert (layer.mode, layer.scale_at) == ("sample", "train")
    assert got["block6d_drop"].survival_prob == pytest.approx(1 - 0.2 * 14 / 16)


@pytest.mark.parametrize("name", [n for n in PARAMS if n not in SLOW])
def test_forward_every_variant(name):
    """Default stochastic depth, tiny input: logits, SD layers as planned, SD state counted."""
    model = create_model(name, num_classes=7, input_shape=(32, 32, 3))
    check_variant(model, name, num_classes=7)
    x = _images(2, 32)
    y = model(x, training=False)
    assert y.shape == (2, 7) and y.dtype == "float32"
    assert np.all(np.isfinite(y))


def check_variant(model: keras.Model, name: str, num_classes: int) -> None:
    """A built variant (default stochastic depth, ``num_classes`` outputs) against its plan and
    its published counts less the head (`PARAMS`): its stochastic-depth layers and rates, its
    trainable and total parameters, stem and head widths, Lite's ReLU6 and missing SE.

    Called by test_forward_every_variant (every variant but the `SLOW` ones) and by
    tests/test_zoo.py on its full-size builds of every variant (the only check of the `SLOW` ones).
    """
    variant = (effnet.EFFICIENTNET | effnet.EFFICIENTNET_LITE)[name]
    lite = name in LITE_NAMES
    plan = effnet.block_plan(
        width=variant.width, depth=variant.depth, fix_stem_head=lite, survival_prob=0.8
    )
    sd = sd_layers.stochastic_depth_layers(model)
    assert [lay.name for lay in sd] == [f"{b.name}drop" for b in plan if b.residual]
    assert [lay.survival_prob for lay in sd] == [b.survival_prob for b in plan if b.residual]
    # Two scalar state variables per stochastic-depth layer (step and keep rate), nothing else;
    # both are non-trainable.
    trainable, total = PARAMS[name]
    top = model.get_layer("top_conv").kernel.shape[-1]
    head = (1000 - num_classes) * (top + 1)  # the Dense classifier's kernel and bias
    assert model.count_params() == total - head + 2 * len(sd)
    assert _count(model.trainable_weights) == trainable - head
    stem = model.get_layer("stem_conv").kernel.shape[-1]
    if lite:  # fixed stem and head, ReLU6, no squeeze-and-excitation
        assert (stem, top) == (32, 1280)
        assert model.get_layer("stem_activation").activation.__name__ == "relu6"
        assert not any("se_" in lay.name for lay in model._flatten_layers())
    else:
        assert (stem, top) == (
            effnet.round_filters(32, variant.width),
            effnet.round_filters(1280, variant.width),
        )


def test_uint8_input_include_top_and_no_sd():
    model = _tiny()
    x = _images(2, 32).round()
    np.testing.assert_allclose(model(x.astype("uint8")), model(x), atol=1e-6)
    plain = _tiny(survival_prob=1.0)
    assert sd_layers.stochastic_depth_layers(plain) == []
    assert {"block4b_add", "block5b_add", "block6b_add"} <= {lay.name for lay in plain.layers}
    features = _tiny(include_top=False)
    assert features.output_shape == (None, 1, 1, 320)
    inference = _tiny(sd_scale_at="inference", sd_mode="batch")
    assert {(lay.mode, lay.scale_at) for lay in sd_layers.stochastic_depth_layers(inference)} == {
        ("batch", "inference")
    }
    assert inference(x, training=True).shape == (2, 4)


def test_feature_extractor_pooling_gives_the_top_models_penultimate_features():
    top = _tiny()
    x = _images(2, 32)
    penultimate = keras.Model(top.input, top.get_layer("avg_pool").output)(x, training=False)
    top_map = keras.Model(top.input, top.get_layer("top_activation").output)(x, training=False)
    for pooling, want in [("avg", penultimate), ("max", np.max(top_map, axis=(1, 2)))]:
        features = _tiny(include_top=False, pooling=pooling)
        assert features.output_shape == (None, 320)
        features.set_weights(top.get_weights()[: len(features.weights)])  # the head comes last
        np.testing.assert_allclose(features(x, training=False), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="include_top=False"):
        _tiny(pooling="max")


@pytest.mark.slow  # a full-size B0 under a mixed policy
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(kapp_b0, policy):
    x = _images(2, 64)
    expected = kapp_b0(x, training=False)  # float32
    keras.mixed_precision.set_global_policy(policy)
    model = create_model("efficientnet_b0", num_classes=1000, input_shape=(64, 64, 3))
    assert model.get_layer("stem_conv").compute_dtype == policy.split("_")[1]
    load_keras_applications_weights(model, kapp_b0)  # the importer works under the policy too
    y = model(x, training=False)
    assert y.dtype == "float32"
    # Same weights, lower-precision activations through 16 blocks with random statistics (which
    # amplify rounding): the logits stay correlated with float32's (measured 0.9999 and 0.97).
    corr = np.corrcoef(np.ravel(y), np.ravel(expected))[0, 1]
    assert corr > (0.999 if policy == "mixed_float16" else 0.9)
    y = model(x, training=True)  # stochastic depth and BN in training mode
    assert y.dtype == "float32" and np.all(np.isfinite(y))


# -------------------------------------------------------------------------------------------------
# Training and saving (eager steps: tracing a train step costs ~1 min on 2 cores).
# -------------------------------------------------------------------------------------------------


def _blobs(n=32, classes=4, seed=0):
    """Images whose class sets a dominant colour: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], "float32")
    x = rng.uniform(0, 80, (n, 32, 32, 3)) + 0.6 * colours[y][:, None, None, :]
    return np.clip(x, 0, 255).astype("float32"), y


def _compile(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )


def test_tiny_variant_trains():
    keras.utils.set_random_seed(1)
    model = _tiny(survival_prob=0.5, seed=3)
    _compile(model, keras.optimizers.Adam(3e-3))
    x, y = _blobs()
    losses = [float(model.train_on_batch(x, y)) for _ in range(12)]
    # Per-step losses are noisy (half the residual blocks and 20% of features dropped per sample).
    assert np.mean(losses[-3:]) < 0.5 * losses[0], losses
    sd = sd_layers.stochastic_depth_layers(model)
    assert [int(lay.step.numpy()) for lay in sd] == [12, 12, 12]
    assert all(0.0 < float(lay.keep_rate.numpy()) <= 1.0 for lay in sd)


def test_keras_round_trip(tmp_path):
    model = _tiny(survival_prob=0.5, seed=5)
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    x, y = _blobs(8)
    np.testing.assert_array_equal(loaded(x, training=False), model(x, training=False))
    assert [
        (lay.name, lay.survival_prob, lay.seed) for lay in sd_layers.stochastic_depth_layers(loaded)
    ] == [
        (lay.name, lay.survival_prob, lay.seed) for lay in sd_layers.stochastic_depth_layers(model)
    ]
    # Training: identical gates (same seeds and steps), dropout masks and updates.
    np.testing.assert_allclose(loaded(x, training=True), model(x, training=True), atol=1e-6)
    for m in (model, loaded):
        _compile(m, keras.optimizers.SGD(0.01, momentum=0.9))
        for _ in range(2):
            m.train_on_batch(x, y)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-5)


# -------------------------------------------------------------------------------------------------
# keras.applications equivalence and the importer.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale_at", ["train", "inference"])
def test_equivalence_b0(kapp_b0, scale_at):
    x = _images(4, 64)
    expected = kapp_b0(x, training=False)
    model = create_model(
        "efficientnet_b0", num_classes=1000, input_shape=(64, 64, 3), sd_scale_at=scale_at
    )
    assert kapp_b0.count_params() == PARAMS["efficientnet_b0"][1]
    assert np.max(np.abs(model(x) - expected)) > 0.1  # the test can fail
    copied = load_keras_applications_weights(model, kapp_b0)
    assert len(copied) == 1 + len(
        [
            lay
            for lay in kapp_b0.layers
            if lay.weights and not isinstance(lay, keras.layers.Normalization)
        ]
    )
    np.testing.assert_allclose(model(x, training=False), expected, atol=1e-4)
    if scale_at == "train":  # no folding: every weight is a copy
        np.testing.assert_array_equal(
            model.get_layer("block6d_drop").branch.get_layer("block6d_project_bn").gamma,
            kapp_b0.get_layer("block6d_project_bn").gamma,
        )


@pytest.mark.slow
def test_equivalence_b3():
    kapp = _kapp("EfficientNetB3", seed=1)
    x = _images(2, 64, seed=1)
    expected = kapp(x, training=False)
    assert kapp.count_params() == PARAMS["efficientnet_b3"][1]
    for scale_at in ("train", "inference"):
        model = create_model(
            "efficientnet_b3", num_classes=1000, input_shape=(64, 64, 3), sd_scale_at=scale_at
        )
        load_keras_applications_weights(model, kapp)
        np.testing.assert_allclose(model(x, training=False), expected, atol=1e-4)


def test_weight_files(kapp_b0, tmp_path):
    """Keras 3 .weights.h5 (positional per class), legacy weights .h5 and full-model .h5."""
    x = _images(2, 64)
    expected = kapp_b0(x, training=False)
    kapp_b0.save_weights(tmp_path / "b0.weights.h5")
    with h5py.File(tmp_path / "b0.h5", "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, kapp_b0)
    kapp_b0.save(tmp_path / "b0_full.h5")
    for path, kwargs in [
        ("b0.weights.h5", {}),
        ("b0.h5", {"imagenet_rescaling": False}),  # weights=None source: no extra rescaling
        ("b0_full.h5", {}),
    ]:
        model = create_model(
            "efficientnet_b0", num_classes=1000, input_shape=(64, 64, 3), sd_scale_at="inference"
        )
        load_keras_applications_weights(model, str(tmp_path / path), **kwargs)
        np.testing.assert_allclose(model(x, training=False), expected, atol=1e-4, err_msg=path)


def test_imagenet_normalization_quirk(tmp_path, monkeypatch):
    """keras.applications' weights="imagenet" model (extra Rescaling), built from a local file."""
    path = str(tmp_path / "efficientnetb0_notop.h5")
    with h5py.File(path, "w") as f:  # any notop weights: keras.applications loads them by order
        plain = keras.applications.EfficientNetB0(
            include_top=False, weights=None, input_shape=(64, 64, 3)
        )
        legacy_h5_format.save_weights_to_hdf5_group(f, plain)
    from keras.src.applications import efficientnet as kapp_effnet

    monkeypatch.setattr(kapp_effnet.file_utils, "get_file", lambda *args, **kwargs: path)
    imagenet = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet", input_shape=(64, 64, 3)
    )
    assert sum(isinstance(lay, keras.layers.Rescaling) for lay in imagenet.layers) == 2  # the quirk
    _randomize(imagenet, seed=2)
    with h5py.File(path, "w") as f:  # the "official" file now holds these weights
        legacy_h5_format.save_weights_to_hdf5_group(f, imagenet)
    x = _images(2, 64, seed=3)
    expected = imagenet(x, training=False)
    plain.set_weights(imagenet.get_weights())
    plain.get_layer(index=2).finalize_state()  # same weights, no extra rescaling: differs
    assert np.max(np.abs(plain(x, training=False) - expected)) > 0.1
    for src in (imagenet, path):  # the model says it; the weights-only file is assumed official
        model = create_model(
            "efficientnet_b0", num_classes=1, input_shape=(64, 64, 3), include_top=False
        )
        load_keras_applications_weights(model, src)
        # One folded normalisation instead of three ops rounds differently (measured 2.5e-5).
        np.testing.assert_allclose(model(x, training=False), expected, atol=1e-4)


def test_importer_errors(kapp_b0, tmp_path):
    x = _images(1, 64)
    # Wrong head size: the shape error names the layer; skip_layers keeps the new head.
    model = create_model("efficientnet_b0", num_classes=10, input_shape=(64, 64, 3))
    before = [np.array(w) for w in model.weights]
    with pytest.raises(ValueError, match=r"'predictions'.*\(1280, 10\).*\(1280, 1000\)"):
        load_keras_applications_weights(model, kapp_b0)
    for a, w in zip(before, model.weights, strict=True):  # a failed import changes nothing
        np.testing.assert_array_equal(a, w)
    copied = load_keras_applications_weights(model, kapp_b0, skip_layers=["predictions"])
    assert "predictions" not in copied and "stem_conv" in copied
    np.testing.assert_array_equal(model.get_layer("predictions").kernel, before[-2])
    # Other variants: missing or extra layers are named.
    b1 = create_model("efficientnet_b1", num_classes=1000, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="'block1b_dwconv'.*has no weights"):
        load_keras_applications_weights(b1, kapp_b0)
    lite = create_model("efficientnet_lite0", num_classes=1000, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match="se_"):
        load_keras_applications_weights(lite, kapp_b0)
    kapp_b0.save_weights(tmp_path / "b0.weights.h5")
    with pytest.raises(ValueError, match="Layer 'block"):  # positional: a shape or a layer
        load_keras_applications_weights(b1, str(tmp_path / "b0.weights.h5"))
    features = create_model(
        "efficientnet_b0", num_classes=1, input_shape=(64, 64, 3), include_top=False
    )
    with pytest.raises(ValueError, match="dense"):
        load_keras_applications_weights(features, str(tmp_path / "b0.weights.h5"))
    # Bad sources.
    with pytest.raises(ValueError, match="source must be"):
        load_keras_applications_weights(model, 42)
    with pytest.raises(FileNotFoundError):
        load_keras_applications_weights(model, str(tmp_path / "missing.h5"))
    (tmp_path / "junk.h5").write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5"):
        load_keras_applications_weights(model, str(tmp_path / "junk.h5"))
    (tmp_path / "m.keras").write_text("zip")
    with pytest.raises(ValueError, match="load_model"):
        load_keras_applications_weights(model, str(tmp_path / "m.keras"))
    with pytest.raises(ValueError, match="file sources only"):
        load_keras_applications_weights(model, kapp_b0, imagenet_rescaling=True)
    with pytest.raises(ValueError, match="not weight-carrying"):
        load_keras_applications_weights(model, kapp_b0, skip_layers=["nope"])
    assert model(x).shape == (1, 10)


# -------------------------------------------------------------------------------------------------
# scale_branch_output.
# -------------------------------------------------------------------------------------------------


def _residual(branch_layers, shape=(4, 4, 3)):
    inp = keras.Input(shape)
    out = inp
    for layer in branch_layers:
        out = layer(out)
    block = sd_layers.StochasticResidual(keras.Model(inp, out), 0.5, scale_at="inference")
    block.build((None, *shape))
    return block


def test_scale_branch_output():
    x = np.random.default_rng(0).normal(size=(2, 4, 4, 3)).astype("float32")
    # The walk looks through the Dropout (scale-equivariant) to the BN before it.
    bn = keras.layers.BatchNormalization(beta_initializer="ones")
    block = _residual([keras.layers.Conv2D(3, 1), bn, keras.layers.Dropout(0.5)])
    before = np.asarray(block.branch(x, training=False))
    assert scale_branch_output(block, 2.5) is bn
    np.testing.assert_allclose(block.branch(x, training=False), 2.5 * before, rtol=1e-5)
    # A conv with bias ending the branch: kernel and bias scale.
    conv = keras.layers.Conv2D(3, 1, bias_initializer="ones")
    block = _residual([conv])
    before = np.asarray(block.branch(x))
    scale_branch_output(block, 0.5)
    np.testing.assert_allclose(block.branch(x), 0.5 * before, rtol=1e-5)
    # A bare layer as the branch.
    dense = keras.layers.Dense(3, bias_initializer="ones")
    bare = sd_layers.StochasticResidual(dense, 0.5)
    bare.build((None, 3))
    kernel = np.asarray(dense.kernel)
    scale_branch_output(bare, 3.0)
    np.testing.assert_allclose(dense.kernel, 3.0 * kernel)
    np.testing.assert_allclose(dense.bias, [3.0, 3.0, 3.0])
    # A Sequential branch ending in a depthwise conv with bias.
    depthwise = keras.layers.DepthwiseConv2D(1, use_bias=True, bias_initializer="ones")
    seq = sd_layers.StochasticResidual(keras.Sequential([keras.Input((4, 4, 3)), depthwise]), 0.5)
    seq.build((None, 4, 4, 3))
    before = np.asarray(seq.branch(x))
    assert scale_branch_output(seq, 2.0) is depthwise
    np.testing.assert_allclose(seq.branch(x), 2.0 * before, rtol=1e-5)
    # Errors: non-linear end, gamma-less BN, non-affine end, identity branch, a layer used twice,
    # bad factor or layer.
    with pytest.raises(ValueError, match="non-linear"):
        scale_branch_output(_residual([keras.layers.Conv2D(3, 1, activation="relu")]), 2.0)
    with pytest.raises(ValueError, match="scale=False"):
        scale_branch_output(_residual([keras.layers.BatchNormalization(scale=False)]), 2.0)
    with pytest.raises(ValueError, match="expected a BatchNormalization"):
        scale_branch_output(_residual([keras.layers.Conv2D(3, 1), keras.layers.ReLU()]), 2.0)
    with pytest.raises(ValueError, match="its input"):
        scale_branch_output(_residual([keras.layers.Dropout(0.1)]), 2.0)
    shared = keras.layers.Conv2D(3, 1)
    with pytest.raises(ValueError, match="more than once"):
        scale_branch_output(_residual([shared, shared]), 2.0)
    for factor in (0.0, -1.0, math.inf, True):
        with pytest.raises(ValueError, match="positive finite"):
            scale_branch_output(block, factor)
    with pytest.raises(ValueError, match="needs a StochasticResidual"):
        scale_branch_output(dense, 2.0)


def test_folding_matches_inverted_scaling_in_expectation():
    """After import, a scale_at="inference" model's branch is the keras branch divided by p."""
    kapp = _kapp("EfficientNetB0", input_shape=(32, 32, 3), seed=4)
    model = create_model(
        "efficientnet_b0", num_classes=1000, input_shape=(32, 32, 3), sd_scale_at="inference"
    )
    load_keras_applications_weights(model, kapp)
    layer = model.get_layer("block6d_drop")
    ours = layer.branch.get_layer("block6d_project_bn")
    theirs = kapp.get_layer("block6d_project_bn")
    np.testing.assert_allclose(
        ours.gamma, np.asarray(theirs.gamma) / layer.survival_prob, rtol=1e-6
    )
    np.testing.assert_allclose(ours.beta, np.asarray(theirs.beta) / layer.survival_prob, rtol=1e-6)
    assert tf.reduce_all(ours.moving_mean == theirs.moving_mean)
