"""keras.applications architectures in the registry, with stochastic depth by rewriting.

``create_model("keras_applications/ResNet50", num_classes=…, survival_prob=0.5)`` builds
``keras.applications.ResNet50(weights=None)`` and hands it to
`tfsd.models.rewrite.add_stochastic_depth`, so a config can name any of these architectures
(``model.name=keras_applications/ResNet50``) and train, export and convert it like tfsd's own
models (the folded export drops every stochastic-depth op).

Input: images with values in [0, 255], as every tfsd model. EfficientNet, EfficientNetV2 and
ConvNeXt normalise inside the model (keras.applications' own preprocessing layers); ResNet50,
ResNet50V2 and MobileNetV2 get tfsd's ImageNet normalisation (`normalize_pixels`) in front:
these builders train from scratch (``weights=None``), so keras.applications' ImageNet weights
(``caffe`` / ``tf`` preprocessing) are not what they expect.

With survival_prob = 1.0 the model holds no stochastic-depth layer, like tfsd's builders: the
EfficientNets' own drop-connect ``Dropout`` layers are removed too (rewritten at p = 1 and
folded back to plain ``Add`` layers).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import keras

from tfsd.models import common, folding, registry, rewrite

PREFIX = "keras_applications/"


class _Arch(NamedTuple):
    """One keras.applications constructor: its size, blocks and whether it normalises inputs."""

    constructor: str  # attribute of keras.applications
    size: int  # keras.applications' default resolution
    blocks: int  # residual blocks (tests/test_rewrite_apps.py counts them)
    normalizes: bool  # has its own input preprocessing (include_preprocessing)


ARCHITECTURES = {
    "ResNet50": _Arch("ResNet50", 224, 16, False),
    "ResNet101": _Arch("ResNet101", 224, 33, False),
    "ResNet152": _Arch("ResNet152", 224, 50, False),
    "ResNet50V2": _Arch("ResNet50V2", 224, 16, False),
    "MobileNetV2": _Arch("MobileNetV2", 224, 10, False),
    "EfficientNetB0": _Arch("EfficientNetB0", 224, 9, True),
    "EfficientNetV2B0": _Arch("EfficientNetV2B0", 224, 15, True),
    "ConvNeXtTiny": _Arch("ConvNeXtTiny", 224, 18, True),
}

# Inverted scaling by default: the rewritten model's inference equals keras.applications'.
SD_DEFAULT = common.SDConfig(survival_prob=1.0, mode="batch", scale_at="train")


def _builder(arch: _Arch):
    @common.sd_builder(SD_DEFAULT)
    def build(
        *,
        name: str,
        num_classes: int,
        input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
        sd: common.SDConfig,
        include_top: bool = True,
        pooling: str | None = None,
        sync_bn: bool = False,
    ) -> keras.Model:
        common.check_head(include_top, pooling)
        if sync_bn:
            raise NotImplementedError(
                f"{name}: keras.applications models use plain BatchNormalization; "
                "synchronized BatchNorm (sync_bn) is implemented for tfsd's own builders only."
            )
        if sd.sample_skip_min_drop:
            raise NotImplementedError(
                f"{name}: sample_skip_min_drop is implemented for tfsd's own builders only; "
                "add_stochastic_depth skips in every block (sample_skip) or in none."
            )
        inputs = keras.Input(input_shape, name="image")
        x = inputs
        if not arch.normalizes:
            x = common.normalize_pixels(x, common.IMAGENET_MEAN, common.IMAGENET_STD)
        kwargs: dict[str, Any] = dict(
            weights=None, input_tensor=x, include_top=include_top, pooling=pooling
        )
        if include_top:
            kwargs.update(classes=num_classes, classifier_activation=None)  # logits
        base = getattr(keras.applications, arch.constructor)(**kwargs)
        model = rewrite.add_stochastic_depth(
            base,
            survival_prob=sd.survival_prob,
            rule=sd.rule,
            mode=sd.mode,
            scale_at=sd.scale_at,
            seed=sd.seed,
            sample_skip=common.resolve_sample_skip(sd.sample_skip, sd.mode, True),
            sync_replicas=sd.sync_replicas,
        )
        if sd.survival_prob == 1.0:
            model = folding.fold_stochastic_depth(model)
        outputs = model.outputs
        if include_top:
            # keras.applications' head computes in the policy's dtype: bfloat16/float16 logits
            # under mixed precision. tfsd's heads give float32 logits (the loss and softmax in
            # float32, Keras' mixed-precision guide), so the logits are cast here.
            outputs = keras.layers.Activation("linear", dtype="float32", name="logits")(
                model.outputs[0]
            )
        return keras.Model(model.inputs, outputs, name=name.replace("/", "_"))

    return build


for _key, _arch in ARCHITECTURES.items():
    registry.register(
        PREFIX + _key,
        _builder(_arch),
        info=registry.ModelInfo(
            input_size=(_arch.size, _arch.size, 3),
            mean=common.IMAGENET_MEAN,
            std=common.IMAGENET_STD,
            num_blocks=_arch.blocks,
            num_sd_blocks=_arch.blocks,
            sd=SD_DEFAULT,
        ),
    )
