"""EfficientNet-B0…B7 and EfficientNet-Lite0…4 with per-sample stochastic depth.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019,
arXiv:1905.11946, and its TF reference (``tensorflow/tpu``, ``models/official/efficientnet``,
Lite: ``lite/efficientnet_lite_builder.py``). The B-models match keras.applications
``efficientnet.py`` (Keras 3.15) layer for layer (names, shapes, initialisers, padding, BatchNorm),
so its weights port by name; stochastic depth is the reference's ``drop_connect``.

See docs/models.md, "Reference: tfsd/models/efficientnet.py" (names, scaling rules, stochastic
depth, defaults and why).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import keras

from tfsd import layers as sd_layers
from tfsd.models import common
from tfsd.models.registry import ModelInfo, register


class Stage(NamedTuple):
    """One stage of identical MBConv blocks (the first one carries the stride)."""

    expand: int  # expansion ratio of the 1×1 expand conv (1: no expand conv)
    kernel: int  # depthwise kernel size
    stride: int  # stride of the stage's first block
    filters_in: int  # input channels before width scaling
    filters_out: int  # output channels before width scaling
    repeats: int  # blocks before depth scaling
    se_ratio: float  # squeeze channels as a fraction of the block's input channels


# EfficientNet-B0 (Tan & Le 2019, table 1; keras.applications DEFAULT_BLOCKS_ARGS).
# Columns: expand, kernel, stride, filters_in, filters_out, repeats, se_ratio.
B0_STAGES = (
    Stage(1, 3, 1, 32, 16, 1, 0.25),
    Stage(6, 3, 2, 16, 24, 2, 0.25),
    Stage(6, 5, 2, 24, 40, 2, 0.25),
    Stage(6, 3, 2, 40, 80, 3, 0.25),
    Stage(6, 5, 1, 80, 112, 3, 0.25),
    Stage(6, 5, 2, 112, 192, 4, 0.25),
    Stage(6, 3, 1, 192, 320, 1, 0.25),
)
STEM_FILTERS = 32  # 3×3/2 stem conv (before width scaling)
HEAD_FILTERS = 1280  # 1×1 head conv (before width scaling)


class Variant(NamedTuple):
    """Compound-scaling coefficients of one registered model."""

    width: float  # channel multiplier
    depth: float  # repeats multiplier
    resolution: int  # default input height and width
    dropout: float  # dropout rate before the classifier


# TF reference ``efficientnet_builder.efficientnet_params`` (= keras.applications). B8 would be
# ``Variant(width=2.2, depth=3.6, resolution=672, dropout=0.5)``.
EFFICIENTNET = {
    "efficientnet_b0": Variant(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "efficientnet_b1": Variant(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "efficientnet_b2": Variant(width=1.1, depth=1.2, resolution=260, dropout=0.3),
    "efficientnet_b3": Variant(width=1.2, depth=1.4, resolution=300, dropout=0.3),
    "efficientnet_b4": Variant(width=1.4, depth=1.8, resolution=380, dropout=0.4),
    "efficientnet_b5": Variant(width=1.6, depth=2.2, resolution=456, dropout=0.4),
    "efficientnet_b6": Variant(width=1.8, depth=2.6, resolution=528, dropout=0.5),
    "efficientnet_b7": Variant(width=2.0, depth=3.1, resolution=600, dropout=0.5),
}
# TF reference ``lite/efficientnet_lite_builder.efficientnet_lite_params``.
EFFICIENTNET_LITE = {
    "efficientnet_lite0": Variant(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "efficientnet_lite1": Variant(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "efficientnet_lite2": Variant(width=1.1, depth=1.2, resolution=260, dropout=0.3),
    "efficientnet_lite3": Variant(width=1.2, depth=1.4, resolution=280, dropout=0.3),
    "efficientnet_lite4": Variant(width=1.4, depth=1.8, resolution=300, dropout=0.3),
}
# What distinguishes the two families besides the table rows.
B_FAMILY = dict(activation="swish", use_se=True, fix_stem_head=False)
LITE_FAMILY = dict(activation="relu6", use_se=False, fix_stem_head=True)

# keras.applications efficientnet.py: CONV_KERNEL_INITIALIZER and DENSE_KERNEL_INITIALIZER.
_CONV_INIT = dict(scale=2.0, mode="fan_out", distribution="truncated_normal")
_DENSE_INIT = dict(scale=1.0 / 3.0, mode="fan_out", distribution="uniform")


# -------------------------------------------------------------------------------------------------
# Scaling rules and the block plan.
# -------------------------------------------------------------------------------------------------


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """``filters · width`` rounded to a multiple of ``divisor``, never below 90% of it."""
    filters *= width
    new_filters = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new_filters < 0.9 * filters:
        new_filters += divisor
    return int(new_filters)


def round_repeats(repeats: int, depth: float) -> int:
    """``ceil(depth · repeats)``."""
    return int(math.ceil(depth * repeats))


class Block(NamedTuple):
    """One MBConv block of a built model, in order."""

    name: str  # layer-name prefix, e.g. "block2b_"
    index: int  # i = 0…N−1 over all blocks: the stochastic-depth schedule's position
    expand: int
    kernel: int
    stride: int
    filters_in: int
    filters_out: int
    se_ratio: float
    survival_prob: float  # from the schedule; used only when ``residual`` is True
    residual: bool  # identity skip (stride 1 and filters_in == filters_out)


def block_plan(
    *,
    width: float,
    depth: float,
    fix_stem_head: bool,
    survival_prob: float,
    stages: Sequence[Stage] = B0_STAGES,
    rule: str = "efficientnet",
) -> list[Block]:
    """All blocks of a variant after width and depth scaling, with their survival rates.

    With ``fix_stem_head`` the first and last stages keep their repeats (TF Lite reference,
    ``fix_head_stem``). Survival follows `tfsd.layers.survival_schedule` with ``rule`` (default
    "efficientnet": ``1 − r·i/N``) over all N blocks; blocks without an identity skip keep their
    slot in the count but get no layer.
    """
    repeats = [
        s.repeats
        if fix_stem_head and k in (0, len(stages) - 1)
        else round_repeats(s.repeats, depth)
        for k, s in enumerate(stages)
    ]
    rates = sd_layers.survival_schedule(sum(repeats), survival_prob, rule)
    blocks = []
    for k, (stage, n) in enumerate(zip(stages, repeats, strict=True)):
        # With a fixed stem the first stage really receives the unscaled stem width.
        fixed_input = fix_stem_head and k == 0
        filters_in = stage.filters_in if fixed_input else round_filters(stage.filters_in, width)
        filters_out = round_filters(stage.filters_out, width)
        for j in range(n):
            stride = stage.stride if j == 0 else 1
            f_in = filters_in if j == 0 else filters_out
            index = len(blocks)
            blocks.append(
                Block(
                    name=f"block{k + 1}{chr(ord('a') + j)}_",
                    index=index,
                    expand=stage.expand,
                    kernel=stage.kernel,
                    stride=stride,
                    filters_in=f_in,
                    filters_out=filters_out,
                    se_ratio=stage.se_ratio,
                    survival_prob=rates[index],
                    residual=stride == 1 and f_in == filters_out,
                )
            )
    return blocks


PADDINGS = ("same", "symmetric")  # the stride-2 convs' padding, `efficientnet` stride2_padding


def _correct_pad(size: tuple[int | None, int | None], kernel: int, mode: str = "same") -> tuple:
    """The explicit padding of a stride-2 conv.

    "same": keras.applications' ``correct_pad``, TF "same" padding (one pixel less before than
    after on even sizes), as the TF reference, timm's ``tf_`` ports and lukemelas'
    ``Conv2dStaticSamePadding``. "symmetric": ``kernel // 2`` on every side, PyTorch's
    ``padding=k // 2`` as timm's native ``efficientnet_b0`` / ``efficientnet_lite0``.
    """
    half = kernel // 2
    if mode == "symmetric":
        return ((half, half), (half, half))
    adjust = (1, 1) if size[0] is None else (1 - size[0] % 2, 1 - size[1] % 2)
    return ((half - adjust[0], half), (half - adjust[1], half))


# -------------------------------------------------------------------------------------------------
# Layers.
# -------------------------------------------------------------------------------------------------


class _Ops:
    """Conv/BN factories sharing a builder's BatchNorm settings and activation."""

    def __init__(self, activation: str, bn_momentum: float, bn_epsilon: float, sync_bn: bool):
        self.activation = activation
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_bn = sync_bn

    def conv(self, x, filters: int, kernel: int, name: str, **kwargs):
        init = keras.initializers.VarianceScaling(**_CONV_INIT)
        kwargs.setdefault("use_bias", False)
        kwargs.setdefault("padding", "same")
        return keras.layers.Conv2D(filters, kernel, kernel_initializer=init, name=name, **kwargs)(x)

    def bn(self, x, name: str):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            synchronized=self.sync_bn,
            name=name,
        )(x)

    def act(self, x, name: str):
        return keras.layers.Activation(self.activation, name=name)(x)


def _mbconv_fn(ops: _Ops, block: Block, use_se: bool, padding: str = "same"):
    """The body of an MBConv block up to ``project_bn`` (keras.applications ``block``)."""
    p = block.name

    def body(inputs):
        filters = block.filters_in * block.expand
        x = inputs
        if block.expand != 1:
            x = ops.conv(x, filters, 1, f"{p}expand_conv")
            x = ops.bn(x, f"{p}expand_bn")
            x = ops.act(x, f"{p}expand_activation")
        if block.stride == 2:
            pad = _correct_pad(x.shape[1:3], block.kernel, padding)
            x = keras.layers.ZeroPadding2D(pad, name=f"{p}dwconv_pad")(x)
        x = keras.layers.DepthwiseConv2D(
            block.kernel,
            strides=block.stride,
            padding="valid" if block.stride == 2 else "same",
            use_bias=False,
            depthwise_initializer=keras.initializers.VarianceScaling(**_CONV_INIT),
            name=f"{p}dwconv",
        )(x)
        x = ops.bn(x, f"{p}bn")
        x = ops.act(x, f"{p}activation")
        if use_se and 0 < block.se_ratio <= 1:
            # Squeeze to se_ratio × the block's *input* channels (reference and keras.applications).
            filters_se = max(1, int(block.filters_in * block.se_ratio))
            se = keras.layers.GlobalAveragePooling2D(name=f"{p}se_squeeze")(x)
            se = keras.layers.Reshape((1, 1, x.shape[-1]), name=f"{p}se_reshape")(se)
            se = ops.conv(
                se, filters_se, 1, f"{p}se_reduce", use_bias=True, activation=ops.activation
            )
            se = ops.conv(se, x.shape[-1], 1, f"{p}se_expand", use_bias=True, activation="sigmoid")
            x = keras.layers.Multiply(name=f"{p}se_excite")([x, se])
        x = ops.conv(x, block.filters_out, 1, f"{p}project_conv")
        return ops.bn(x, f"{p}project_bn")

    return body


# -------------------------------------------------------------------------------------------------
# Builder.
# -------------------------------------------------------------------------------------------------


# The TF reference's settings: survival 0.8 (drop-connect 0.2), one gate per example, inverted
# scaling, rate r·i/N over all N blocks.
EFFICIENTNET_SD = common.SDConfig(
    survival_prob=0.8, mode="sample", scale_at="train", rule="efficientnet"
)


@common.sd_builder(EFFICIENTNET_SD)
def efficientnet(
    *,
    name: str,
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] | None = None,
    width: float,
    depth: float,
    resolution: int,
    dropout: float,
    sd: common.SDConfig,
    activation: str = "swish",
    use_se: bool = True,
    fix_stem_head: bool = False,
    mean: Sequence[float] = common.IMAGENET_MEAN,
    std: Sequence[float] = common.IMAGENET_STD,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    sync_bn: bool = False,
    stride2_padding: str = "same",
    include_top: bool = True,
    pooling: str | None = None,
) -> keras.Model:
    """An EfficientNet (or EfficientNet-Lite) scaled from the B0 stage table.

    Args:
      name: model name (the registry key).
      num_classes: classifier size (1000 for ImageNet); unused with ``include_top=False``.
      input_shape: (height, width, 3); None uses (resolution, resolution, 3). Spatial sizes may
        be None (stride-2 padding then assumes even sizes, as keras.applications).
      width, depth: channel and repeat multipliers of the B0 table (`round_filters`,
        `round_repeats`).
      resolution: default input height and width.
      dropout: dropout rate before the classifier, in [0, 1); 0 adds no ``top_dropout`` layer.
      sd: stochastic-depth settings (`common.SDConfig`), default `EFFICIENTNET_SD`:
        ``survival_prob=0.8`` = 1 − the drop-connect rate r, with ``rule="efficientnet"`` block i
        of N survives with 1 − r·i/N (docs/models.md; 1.0 adds no stochastic-depth layer);
        ``mode="sample"`` (the reference's drop_connect; "batch" is the paper's whole-batch gate,
        dropped branches skipped); ``scale_at="train"`` (inverted scaling as the reference);
        ``seed=0`` (block i gets ``common.block_seed(seed, i)``, the head dropout block N's);
        ``sample_skip=None``: the mask form, whose training outputs match keras.applications'
        bit for bit for equal gates (True: run each residual branch on its kept examples only,
        see `tfsd.layers.StochasticResidual`; not under XLA). The keywords ``survival_prob``,
        ``sd_mode``, ``sd_scale_at``, ``rule``, ``seed``, ``sync_replicas`` and ``sample_skip``
        replace its fields (`common.sd_builder`).
      activation: "swish" (B-models) or "relu6" (Lite), any Keras activation name.
      use_se: squeeze-and-excitation in every block (False for Lite).
      fix_stem_head: keep the stem and head widths and the first and last stages' repeats
        unscaled (Lite).
      mean, std: per-channel statistics of [0, 1] images; ImageNet's by default.
      bn_momentum, bn_epsilon: BatchNorm settings (0.99 and 1e-3 as the reference).
      sync_bn: cross-replica (synchronized) BatchNorm, as the TPU recipe (needs
        ``sync_replicas=True`` with skipping stochastic depth).
      stride2_padding: padding of the stride-2 stem and depthwise convs: "same" (TF "same",
        as keras.applications and the TF reference) or "symmetric" (PyTorch ``k // 2``, for
        timm's non-``tf_`` weights; `tfsd.models.load_torch_efficientnet_weights`).
      include_top: add the pooled classifier; False builds a feature extractor (as
        keras.applications) whose output ``pooling`` chooses.
      pooling: with ``include_top=False``: None returns the ``top_activation`` feature map,
        "avg" or "max" its global average (``avg_pool``) or maximum (``max_pool``).

    Returns:
      A functional ``keras.Model`` named ``name`` mapping [0, 255] images to float32 logits.
    """
    common.check_head(include_top, pooling)
    common.check_number(width, "width", 0.0)
    common.check_number(depth, "depth", 0.0)
    common.check_number(dropout, "dropout", 0.0, 1.0, closed=False)
    common.check_number(bn_momentum, "bn_momentum", 0.0, 1.0)
    common.check_number(bn_epsilon, "bn_epsilon", 0.0)
    if stride2_padding not in PADDINGS:
        raise ValueError(f"stride2_padding must be one of {PADDINGS}, got {stride2_padding!r}.")
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
        raise ValueError(f"resolution must be a positive integer, got {resolution!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    input_shape = (resolution, resolution, 3) if input_shape is None else tuple(input_shape)
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}.")
    # Mask form by default: keras.applications equivalence (BatchNorm sees the whole batch).
    sample_skip = common.resolve_sample_skip(sd.sample_skip, sd.mode, False)
    sd.check_sync_bn(sync_bn, sample_skip)

    ops = _Ops(activation, bn_momentum, bn_epsilon, sync_bn)
    plan = block_plan(
        width=width,
        depth=depth,
        fix_stem_head=fix_stem_head,
        survival_prob=sd.survival_prob,
        rule=sd.rule,
    )
    stem_filters = STEM_FILTERS if fix_stem_head else round_filters(STEM_FILTERS, width)
    head_filters = HEAD_FILTERS if fix_stem_head else round_filters(HEAD_FILTERS, width)

    inputs = keras.Input(shape=input_shape, name="images")
    x = common.normalize_pixels(inputs, mean, std)
    # Stem: 3×3/2 conv + BN + activation.
    stem_pad = _correct_pad(x.shape[1:3], 3, stride2_padding)
    x = keras.layers.ZeroPadding2D(stem_pad, name="stem_conv_pad")(x)
    x = ops.conv(x, stem_filters, 3, "stem_conv", strides=2, padding="valid")
    x = ops.bn(x, "stem_bn")
    x = ops.act(x, "stem_activation")

    for block in plan:
        body = _mbconv_fn(ops, block, use_se, stride2_padding)
        if not block.residual:
            x = body(x)
            continue
        x = common.residual(
            x,
            body,
            name=block.name,
            sd=sd,
            index=block.index,
            survival_prob=block.survival_prob,
            sample_skip=sample_skip,
        )

    # Head: 1×1 conv + BN + activation, global average pool, dropout, linear classifier.
    x = ops.conv(x, head_filters, 1, "top_conv")
    x = ops.bn(x, "top_bn")
    x = ops.act(x, "top_activation")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout > 0:
            seed_top = sd.block_seed(len(plan))
            x = common.ReplicaDropout(dropout, seed=seed_top, name="top_dropout")(x)
        x = keras.layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.VarianceScaling(**_DENSE_INIT),
            dtype="float32",  # float32 logits under any mixed-precision policy
            name="predictions",
        )(x)
    else:
        x = common.feature_pooling(x, pooling)
    return keras.Model(inputs, x, name=name)


# -------------------------------------------------------------------------------------------------
# Registered variants: one table row each.
# -------------------------------------------------------------------------------------------------


def _register(name: str, variant: Variant, family: dict) -> None:
    plan = block_plan(
        width=variant.width,
        depth=variant.depth,
        fix_stem_head=family["fix_stem_head"],
        survival_prob=EFFICIENTNET_SD.survival_prob,
    )
    info = ModelInfo(
        (variant.resolution, variant.resolution, 3),
        common.IMAGENET_MEAN,
        common.IMAGENET_STD,
        len(plan),
        # A residual block whose schedule gives p = 1 (block 0 under the "efficientnet" rule)
        # never gets a stochastic-depth layer.
        sum(b.residual and b.survival_prob < 1.0 for b in plan),
        EFFICIENTNET_SD,
    )
    register(name, efficientnet, info=info, **variant._asdict(), **family)


for _name, _variant in EFFICIENTNET.items():
    _register(_name, _variant, B_FAMILY)
for _name, _variant in EFFICIENTNET_LITE.items():
    _register(_name, _variant, LITE_FAMILY)
# Tiny variant for tests of the training loop, export and serving (timm's test_efficientnet):
# B0's blocks (swish, squeeze-excite, top dropout), width 0.25, one block per stage, 32 x 32
# pixels. Its only residual block is block 0, which the "efficientnet" rule keeps with p = 1: it
# has no stochastic-depth layer (test_resnet is the tiny model with gates).
_register("test_efficientnet", Variant(width=0.25, depth=0.1, resolution=32, dropout=0.2), B_FAMILY)
