"""The registry's create_model with stochastic-depth settings (SDConfig) and its model info."""

import dataclasses

import pytest

from tfsd import layers as sdl
from tfsd.models import (
    SDConfig,
    common,
    create_model,
    default_input_size,
    efficientnet,
    get_builder,
    get_model_info,
    list_models,
    resnet,
)


def test_sdconfig_validates_once_for_every_builder():
    with pytest.raises(ValueError, match="sd_mode"):
        SDConfig(mode="layer")
    with pytest.raises(ValueError, match="sd_scale_at"):
        SDConfig(scale_at="test")
    with pytest.raises(ValueError, match="final_survival"):
        SDConfig(survival_prob=0.0)
    with pytest.raises(ValueError, match="rule"):
        SDConfig(rule="cosine")
    with pytest.raises(ValueError, match="sample_skip=True needs"):
        SDConfig(sample_skip=True)
    with pytest.raises(ValueError, match="seed"):
        SDConfig(seed=1.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        SDConfig().survival_prob = 0.5
    # The same checks through either family's builders.
    for name in ("cifar_resnet20", "efficientnet_lite0"):
        with pytest.raises(ValueError, match="rule"):
            create_model(name, num_classes=2, rule="cosine")
        with pytest.raises(ValueError, match="sd must be an SDConfig"):
            create_model(name, num_classes=2, sd={"survival_prob": 0.5})


def test_sd_keywords_and_sd_object_build_the_same_model():
    kwargs = dict(num_classes=3, width=0.25, input_shape=(16, 16, 3))
    sd = SDConfig(survival_prob=0.7, mode="sample", scale_at="train", rule="linspace", seed=4)
    by_object = create_model("cifar_resnet20", sd=sd, **kwargs)
    by_keywords = create_model(
        "cifar_resnet20",
        survival_prob=0.7,
        sd_mode="sample",
        sd_scale_at="train",
        rule="linspace",
        seed=4,
        **kwargs,
    )
    layers = [sdl.stochastic_depth_layers(m) for m in (by_object, by_keywords)]
    assert [(x.survival_prob, x.mode, x.scale_at, x.seed) for x in layers[0]] == [
        (x.survival_prob, x.mode, x.scale_at, x.seed) for x in layers[1]
    ]
    # linspace over 9 blocks: the first block gets 1.0 (no layer), the last exactly p.
    assert len(layers[0]) == 8 and layers[0][-1].survival_prob == pytest.approx(0.7)
    assert [x.survival_prob for x in layers[0]] == pytest.approx(
        sdl.survival_schedule(9, 0.7, "linspace")[1:]
    )
    # Keywords refine a given sd object.
    refined = create_model("cifar_resnet20", sd=sd, survival_prob=0.9, **kwargs)
    assert sdl.stochastic_depth_layers(refined)[-1].survival_prob == pytest.approx(0.9)


def test_efficientnet_takes_any_named_rule():
    model = create_model(
        "efficientnet_b0", num_classes=2, width=0.25, depth=0.34, input_shape=(32, 32, 3),
        rule="linear",
    )  # fmt: skip
    info = efficientnet.block_plan(width=0.25, depth=0.34, fix_stem_head=False, survival_prob=0.8)
    n = len(info)
    want = {b.name + "drop": 1 - 0.2 * (b.index + 1) / n for b in info if b.residual}
    got = {x.name: x.survival_prob for x in sdl.stochastic_depth_layers(model)}
    assert got == pytest.approx(want)


def test_model_info_for_every_registered_model():
    for name in list_models():
        info = get_model_info(name)
        builder = get_builder(name)
        assert info.sd == builder.func.sd_default
        assert default_input_size(name) == info.input_size
        assert info.num_sd_blocks <= info.num_blocks
    assert get_model_info("cifar_resnet110")[:5] == (
        (32, 32, 3),
        common.CIFAR10_MEAN,
        common.CIFAR10_STD,
        54,
        54,
    )
    assert get_model_info("resnet152").num_blocks == 50
    assert get_model_info("efficientnet_b0")[3:5] == (16, 9)
    assert get_model_info("efficientnet_b7").num_blocks == 55
    for name, variant in efficientnet.EFFICIENTNET.items():
        assert default_input_size(name) == (variant.resolution, variant.resolution, 3)
    assert get_model_info("resnet50").sd == resnet.IMAGENET_SD
    assert get_model_info("efficientnet_b3").sd.rule == "efficientnet"
    with pytest.raises(ValueError, match="Did you mean"):
        get_model_info("resnet05")


def test_create_model_uses_the_registered_input_size():
    model = create_model("efficientnet_lite3", num_classes=2, width=0.1, depth=0.1)
    assert model.input_shape == (None, 280, 280, 3) == (None, *default_input_size(model.name))
