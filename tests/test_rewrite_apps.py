"""add_stochastic_depth on keras.applications models (weights=None, 32 px): coverage.

The models are keras.applications' own (not made by tfsd); each is built once per module, and
rewritten in the mask form (per-example gates, no skipping), which XLA compiles. Full-size
builds: the ``slow`` tier. The expected block counts are the architectures' residual blocks:

* ResNet50 / ResNet50V2: 3 + 4 + 6 + 3 = 16 bottlenecks, all residual (4 with a projection
  shortcut in v1; in v2, 4 with a conv shortcut and 3 with a 1×1 max-pool shortcut).
* MobileNetV2: 17 inverted bottlenecks, 10 with a residual (stride 1, same width).
* EfficientNetB0: 16 MBConv blocks, 9 residual (repeats 1, 2, 2, 3, 3, 4, 1: all but the first
  of each stage), each with its drop-connect ``Dropout``.
* EfficientNetV2B0: 21 blocks (repeats 1, 2, 2, 3, 5, 8), 15 residual.
* ConvNeXtTiny: 3 + 3 + 9 + 3 = 18 blocks, all residual.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.applications import convnext

from tests.helpers import sgd_step
from tfsd import layers as sdl
from tfsd.models import fold_stochastic_depth
from tfsd.models.rewrite import add_stochastic_depth

# name: (constructor, residual blocks, of which with a projection shortcut, survival_prob; None
# keeps the model's own drop rates)
APPS = {
    "ResNet50": (keras.applications.ResNet50, 16, 4, 0.5),
    "ResNet50V2": (keras.applications.ResNet50V2, 16, 7, 0.5),
    "MobileNetV2": (keras.applications.MobileNetV2, 10, 0, 0.8),
    "EfficientNetB0": (keras.applications.EfficientNetB0, 9, 0, None),
    "EfficientNetV2B0": (keras.applications.EfficientNetV2B0, 15, 0, None),
    "ConvNeXtTiny": (keras.applications.ConvNeXtTiny, 18, 0, 0.9),
}
SHAPE = (2, 32, 32, 3)


def _x(seed=1):
    return tf.random.stateless_uniform(SHAPE, seed=[seed, 5], maxval=255.0)


@pytest.fixture(scope="module")
def apps():
    """name -> (original, rewritten, report), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            build, _, _, p = APPS[name]
            model = build(weights=None, input_shape=SHAPE[1:], classes=10)
            new, report = add_stochastic_depth(
                model, p, mode="sample", sample_skip=False, return_report=True
            )
            cache[name] = model, new, report
        return cache[name]

    return get


@pytest.fixture(scope="module")
def inference_outputs(apps):
    """name -> (original(x), rewritten(x)) for ``x = _x()``, computed on first use.

    Both tests below compare with them; computed before any test trains a model (the training
    tests come last in this file and each xdist worker runs a module's tests in file order).
    """
    cache = {}

    def get(name):
        if name not in cache:
            model, new, _ = apps(name)
            x = _x()
            cache[name] = model(x).numpy(), new(x).numpy()
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("name", list(APPS))
def test_blocks_found_and_inference_equal(apps, inference_outputs, name):
    model, new, report = apps(name)
    assert len(report.blocks) == APPS[name][1]
    assert not report.skipped  # every Add of these models is a residual block
    assert sum(bool(b.shortcut) for b in report.blocks) == APPS[name][2]
    assert len(sdl.stochastic_depth_layers(new)) == APPS[name][1]
    if APPS[name][3] is None:  # EfficientNets: every drop-connect Dropout replaced, rates kept
        assert all(b.replaced for b in report.blocks)
        assert not [x for x in new._flatten_layers() if isinstance(x, keras.layers.Dropout)][1:]
    ref, out = inference_outputs(name)
    # The two graphs add the same tensors in the same precision: equal to float rounding.
    np.testing.assert_allclose(out, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(APPS))
def test_fold_and_keras_round_trips(apps, inference_outputs, name, tmp_path):
    _, new, _ = apps(name)
    x = _x()
    ref, out = inference_outputs(name)  # the original's and the rewritten model's outputs on x
    folded = fold_stochastic_depth(new)  # folding(add(model)) ≈ model
    assert not sdl.stochastic_depth_layers(folded)
    np.testing.assert_allclose(folded(x).numpy(), ref, rtol=1e-6, atol=1e-7)
    new.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(loaded(x).numpy(), out)


@pytest.mark.slow
def test_training_step_jit_mask_mode(apps):
    # One XLA-compiled training step costs 1-2.5 min per full-size model on the shared 2-core
    # CPU, so CI compiles the smallest (MobileNetV2); all six compiled and trained one step
    # when this was written (docs/rewrite.md, "Coverage"). The skipping forms train in the
    # benchmark smoke run (tests/test_benchmarks.py: ResNet50 batch skip, EfficientNetB0
    # per-example skip).
    _, new, _ = apps("MobileNetV2")
    loss, _ = sgd_step(new, jit_compile=True, from_logits=False)(_x(3), tf.constant([1, 7]))
    assert np.isfinite(float(loss))


@pytest.mark.slow
def test_efficientnet_b0_mask_mode_equals_original_drop_connect(apps):
    """Same keep decisions in both: the original's random draw is replaced by tfsd's gates.

    Each rewritten block's gates are drawn first with its own key (`StochasticDepth._draw_keep`
    at the current step, then the step is put back, so the training call draws them again). The
    original model keeps its graph and layers; only each drop-connect ``Dropout.call`` is replaced
    by what ``tf.nn.experimental.stateless_dropout`` computes for a given keep mask,
    ``x * (1 / (1 - rate)) * mask`` (tensorflow/python/ops/nn_ops.py, ``_dropout``).
    """
    model, _, _ = apps("EfficientNetB0")
    new = add_stochastic_depth(model, mode="sample", sample_skip=False)
    x = _x(4)
    masks = {}
    for layer in sdl.stochastic_depth_layers(new):
        step = int(layer.step.numpy())
        masks[layer.name.removesuffix("add") + "drop"] = layer._draw_keep(SHAPE[0], 4)
        layer.step.assign(step)
    kept = np.concatenate([np.ravel(m) for m in masks.values()])
    assert 0 < kept.sum() < kept.size  # some examples dropped, some kept: the test can fail
    drops = [lay for lay in model.layers if lay.name in masks]
    assert len(drops) == 9
    # The head's element-wise Dropout ("top_dropout", not drop-connect) draws its own random
    # mask in each model: it is the identity in both for this comparison.
    heads = [m.get_layer("top_dropout") for m in (model, new)]
    try:
        for lay in drops:
            mask, scale = masks[lay.name], 1.0 / (1.0 - lay.rate)
            lay.call = lambda x, training=False, m=mask, s=scale: x * s * tf.cast(m, x.dtype)
        for lay in heads:
            lay.call = lambda x, training=False: x
        ref = model(x, training=True).numpy()
        out = new(x, training=True).numpy()
    finally:
        for lay in drops + heads:
            del lay.call
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_convnext_stochastic_depth_layers_replaced():
    # keras.applications' ConvNeXt builder with drop_path_rate > 0 (ConvNeXtTiny fixes it at 0),
    # shrunk: 4 blocks of width 8.
    model = convnext.ConvNeXt(
        depths=[1, 1, 1, 1],
        projection_dims=[8, 8, 8, 8],
        drop_path_rate=0.3,
        input_shape=(32, 32, 3),
        classes=4,
    )
    rates = [lay.drop_path_rate for lay in model.layers if "stochastic_depth" in lay.name]
    assert len(rates) == 3  # the first block's rate is 0: ConvNeXt puts an identity there
    new, report = add_stochastic_depth(model, return_report=True)
    assert [b.survival_prob for b in report.blocks] == [1.0] + [1.0 - r for r in rates]
    assert sum(bool(b.replaced) for b in report.blocks) == 3
    assert not any("stochastic_depth" in lay.name for lay in new._flatten_layers())
    x = _x()
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), rtol=1e-6, atol=1e-7)


def test_keras_hub_resnet_vd_backbone():
    """keras-hub's ResNetBackbone (ResNet-D shortcuts: avg-pool + 1×1 conv + BN, 3 layers).

    keras-hub is not in the test extras (it pulls tensorflow-text, tokenizers, sentencepiece and
    kagglehub); keras-hub 0.32.0 installs beside the pinned Keras 3.15.1 and passed this test.
    """
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[16],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16],  # keras-hub requires 64 first
        stackwise_num_blocks=[2, 2],
        stackwise_num_strides=[1, 2],
        block_type="bottleneck_block_vd",
        image_shape=(32, 32, 3),
    )
    new, report = add_stochastic_depth(backbone, 0.5, return_report=True)
    assert len(report.blocks) == 4 and not report.skipped
    assert len(report.blocks[2].shortcut) == 3  # the ResNet-D projection, outside the branch
    x = _x()
    np.testing.assert_allclose(new(x).numpy(), backbone(x).numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        fold_stochastic_depth(new)(x).numpy(), backbone(x).numpy(), rtol=1e-6, atol=1e-7
    )
