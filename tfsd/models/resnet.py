"""ResNets with stochastic depth: the paper's CIFAR ResNets and ImageNet ResNet-18…152 (v1.5).

ResNet: He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016. The CIFAR
models match Huang, Sun, Liu, Sedra, Weinberger, "Deep Networks with Stochastic Depth", ECCV 2016,
arXiv:1603.09382, and its Torch code (github.com/yueatsprograms/Stochastic_Depth); the ImageNet
models match torchvision (and timm) ``resnet.py`` layer for layer, so weights port. ResNet-50 here
is v1.5 (stride on the 3×3 conv, no conv bias), as in torchvision and timm; keras.applications'
ResNet50 is v1.

See docs/models.md, "Reference: tfsd/models/resnet.py" (names, stochastic depth, defaults and why).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NamedTuple

import keras

from tfsd.models import common
from tfsd.models.registry import ModelInfo, register
from tfsd.models.shortcuts import ChannelZeroPad  # also resnet.ChannelZeroPad, as before

BLOCKS = ("basic", "bottleneck")
# sample_skip=None in sd_mode="sample" builds the mask form. Measured on a quiet 2-core CPU (README,
# Benchmarks, 2026-12-01 23:41): ResNet-110 at p_L = 0.5 trains at 1.058x of no stochastic depth
# in the mask form, 1.043x skipping in every block and 0.950x skipping from the second stage on
# (sample_skip_min_drop=0.17). The default stays the mask form all the same: it runs under XLA
# and on TPU (the skip form refuses them), keeps whole-batch BatchNorm statistics (the reference
# semantics), and the saving is a CPU measurement (no GPU was available). Opt in with
# sample_skip=True, sample_skip_min_drop=0.17.
SAMPLE_SKIP_DEFAULT = False
# Output channels of a block relative to its ``Stage.channels`` (He et al. 2016, table 1).
_EXPANSION = {"basic": 1, "bottleneck": 4}


class Stage(NamedTuple):
    """One stage of residual blocks; architectures are tuples of these rows."""

    channels: int  # width of the block's 3×3 convs; its output is channels × expansion
    blocks: int  # number of residual blocks in the stage
    stride: int  # stride of the stage's first block (on its 3×3 conv)


def cifar_stages(n: int) -> tuple[Stage, ...]:
    """The paper's CIFAR ResNet with 6n + 2 layers: n basic blocks at 16, 32 and 64 channels."""
    return (Stage(16, n, 1), Stage(32, n, 2), Stage(64, n, 2))


def imagenet_stages(blocks: Sequence[int]) -> tuple[Stage, ...]:
    """ImageNet ResNet stages (He et al. 2016, table 1): 64…512 channels, strides 1, 2, 2, 2."""
    if len(blocks) != 4:
        raise ValueError(f"An ImageNet ResNet has 4 stages, got blocks={tuple(blocks)}.")
    return tuple(
        Stage(c, b, s) for c, b, s in zip((64, 128, 256, 512), blocks, (1, 2, 2, 2), strict=True)
    )


# -------------------------------------------------------------------------------------------------
# Layers.
# -------------------------------------------------------------------------------------------------


class _Ops:
    """Conv/BN factories sharing a builder's BatchNorm and initialiser settings."""

    def __init__(self, bn_momentum: float, bn_epsilon: float, sync_bn: bool, conv_fan: str):
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_bn = sync_bn
        # He-normal with a plain (untruncated) normal, as Torch's kaiming_normal_.
        self.conv_init = keras.initializers.VarianceScaling(2.0, conv_fan, "untruncated_normal")

    def conv(self, x, filters: int, kernel: int, stride: int, name: str):
        """Conv without bias, padded as Torch (``padding = kernel // 2`` on every side).

        No bias: BatchNorm follows every conv, so a bias would be dead (zero gradient, absorbed by
        the moving mean), as in fb.resnet.torch, torchvision and timm (the paper's code has them).

        Keras' "same" pads an even input asymmetrically (0 before, 1 after) when the stride is 2,
        Torch pads 1 on both sides; explicit zero padding then "valid" keeps Torch's sampling grid,
        so torchvision weights give torchvision outputs.
        """
        pad = kernel // 2
        if stride > 1 and pad > 0:
            x = keras.layers.ZeroPadding2D(pad, name=f"{name}_pad")(x)
            padding = "valid"
        else:
            padding = "same"
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_initializer=self.conv_init,
            name=f"{name}_conv",
        )(x)

    def bn(self, x, name: str, zero_gamma: bool = False):
        return keras.layers.BatchNormalization(
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            gamma_initializer="zeros" if zero_gamma else "ones",
            synchronized=self.sync_bn,
            name=f"{name}_bn",
        )(x)

    def conv_bn(self, x, filters, kernel, stride, name, relu=True, zero_gamma=False):
        x = self.conv(x, filters, kernel, stride, name)
        x = self.bn(x, name, zero_gamma=zero_gamma)
        return keras.layers.ReLU(name=f"{name}_relu")(x) if relu else x


def _branch_fn(ops: _Ops, block: str, channels: int, stride: int, prefix: str, zero_init: bool):
    """The residual branch f_l of a block (no ReLU at the end: it follows the sum)."""

    def basic(x):
        # conv3×3(stride)-BN-ReLU-conv3×3-BN (He et al. 2016, fig. 2 left).
        x = ops.conv_bn(x, channels, 3, stride, f"{prefix}1")
        return ops.conv_bn(x, channels, 3, 1, f"{prefix}2", relu=False, zero_gamma=zero_init)

    def bottleneck(x):
        # v1.5: 1×1 reduce, 3×3 with the stride, 1×1 expand ×4 (torchvision Bottleneck).
        x = ops.conv_bn(x, channels, 1, 1, f"{prefix}1")
        x = ops.conv_bn(x, channels, 3, stride, f"{prefix}2")
        out = channels * _EXPANSION["bottleneck"]
        return ops.conv_bn(x, out, 1, 1, f"{prefix}3", relu=False, zero_gamma=zero_init)

    return basic if block == "basic" else bottleneck


def _shortcut(ops: _Ops, x, kind: str, out_channels: int, stride: int, prefix: str):
    """The shortcut of a block, or None (``kind``: "projection" or "pad:<placement>")."""
    if stride == 1 and x.shape[-1] == out_channels:
        return None
    if kind.startswith("pad:"):
        # Stochastic-depth Torch code: SpatialAveragePooling(1, 1, 2, 2) then nn.Padding.
        if stride > 1:
            x = keras.layers.AveragePooling2D(1, strides=stride, name=f"{prefix}0_pool")(x)
        return ChannelZeroPad(out_channels, kind[4:], name=f"{prefix}0_zeropad")(x)
    # Projection: 1×1 conv with the block's stride + BN (torchvision ``downsample``).
    return ops.conv_bn(x, out_channels, 1, stride, f"{prefix}0", relu=False)


# -------------------------------------------------------------------------------------------------
# Builders.
# -------------------------------------------------------------------------------------------------


def _ensure_recursion_limit(num_blocks: int) -> None:
    """Raises (never lowers) Python's recursion limit for very deep functional graphs.

    Keras maps a functional graph with a recursive depth-first walk, a few frames per block:
    cifar_resnet1202 (600 blocks) exceeds Python's default limit of 1000. Loading such a model
    from a ``.keras`` file walks the graph again, so the limit stays raised, and importing this
    module raises it for the deepest registered variant (loading needs this module imported
    anyway, for `ChannelZeroPad`).
    """
    needed = 1000 + 10 * num_blocks
    if sys.getrecursionlimit() < needed:
        sys.setrecursionlimit(needed)


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _build(
    *,
    name: str,
    stem: str,
    stages: Sequence[Stage],
    block: str,
    shortcut: str,
    conv_fan: str,
    num_classes: int,
    input_shape: tuple[int | None, int | None, int],
    sd: common.SDConfig,
    width: float,
    mean: Sequence[float],
    std: Sequence[float],
    bn_momentum: float,
    bn_epsilon: float,
    sync_bn: bool,
    zero_init_residual: bool,
    include_top: bool,
    pooling: str | None,
) -> keras.Model:
    """Shared body of both families: stem, stages of stochastic residual blocks, pooled head."""
    if block not in BLOCKS:
        raise ValueError(f"Unknown block {block!r}; expected one of {BLOCKS}.")
    common.check_number(width, "width", 0.0)
    common.check_number(bn_momentum, "bn_momentum", 0.0, 1.0)
    common.check_number(bn_epsilon, "bn_epsilon", 0.0)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    common.check_head(include_top, pooling)
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}.")
    num_blocks = sum(s.blocks for s in stages)
    # L counts every block, down-sampling ones included, as the paper's main.lua (ResNet-110:
    # L = 54). 1.0 everywhere when survival_prob = 1.
    rates = sd.schedule(num_blocks)
    sample_skip = common.resolve_sample_skip(sd.sample_skip, sd.mode, SAMPLE_SKIP_DEFAULT)
    sd.check_sync_bn(sync_bn, sample_skip)
    ops = _Ops(bn_momentum, bn_epsilon, sync_bn, conv_fan)
    _ensure_recursion_limit(num_blocks)

    inputs = keras.Input(shape=tuple(input_shape), name="images")
    x = common.normalize_pixels(inputs, mean, std)
    if stem == "cifar":
        # 3×3 conv to 16 channels + BN + ReLU (paper code; He et al. 2016 section 4.2).
        x = ops.conv_bn(x, _scaled(16, width), 3, 1, "conv1")
    else:
        # 7×7/2 conv + BN + ReLU + 3×3/2 max pool with Torch's symmetric padding (3, then 1).
        # Zero padding before the max pool equals Torch's -inf padding: its input is post-ReLU.
        x = keras.layers.ZeroPadding2D(3, name="conv1_pad")(x)
        x = keras.layers.Conv2D(
            _scaled(64, width),
            7,
            strides=2,
            use_bias=False,
            kernel_initializer=ops.conv_init,
            name="conv1_conv",
        )(x)
        x = ops.bn(x, "conv1")
        x = keras.layers.ReLU(name="conv1_relu")(x)
        x = keras.layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = keras.layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)

    index = 0
    for s, stage in enumerate(stages):
        channels = _scaled(stage.channels, width)
        out_channels = channels * _EXPANSION[block]
        for b in range(stage.blocks):
            stride = stage.stride if b == 0 else 1
            prefix = f"conv{s + 2}_block{b + 1}_"
            x = common.residual(
                x,
                _branch_fn(ops, block, channels, stride, prefix, zero_init_residual),
                name=prefix,
                sd=sd,
                index=index,
                survival_prob=rates[index],
                sample_skip=sample_skip,
                shortcut=_shortcut(ops, x, shortcut, out_channels, stride, prefix),
            )
            # The ReLU follows the sum, outside the branch: a dropped block still applies it
            # (paper eq. 2).
            x = keras.layers.ReLU(name=f"{prefix}out")(x)
            index += 1

    if not include_top:
        return keras.Model(inputs, common.feature_pooling(x, pooling), name=name)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    # Torch's default nn.Linear kernel init, uniform(±1/sqrt(fan_in)); float32 logits always.
    head_init = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    outputs = keras.layers.Dense(
        num_classes, kernel_initializer=head_init, dtype="float32", name="predictions"
    )(x)
    return keras.Model(inputs, outputs, name=name)


# The paper's settings: p_L = 0.5, whole-batch gates, × p at inference, linear rule.
CIFAR_SD = common.SDConfig(survival_prob=0.5, mode="batch", scale_at="inference", rule="linear")
# ImageNet: p_L = 0.8 (the paper's 0.5 gave no gain on ImageNet; Composer drops 0.2 on ResNet-50,
# ~5% faster at similar accuracy), otherwise as CIFAR.
IMAGENET_SD = common.SDConfig(survival_prob=0.8, mode="batch", scale_at="inference", rule="linear")
CIFAR_INPUT_SIZE = (32, 32, 3)
IMAGENET_INPUT_SIZE = (224, 224, 3)


@common.sd_builder(CIFAR_SD)
def cifar_resnet(
    *,
    name: str,
    depth: int,
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] | None = None,
    sd: common.SDConfig,
    width: float = 1.0,
    mean: Sequence[float] = common.CIFAR10_MEAN,
    std: Sequence[float] = common.CIFAR10_STD,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    sync_bn: bool = False,
    zero_init_residual: bool = False,
    shortcut_pad: str = "after",
    include_top: bool = True,
    pooling: str | None = None,
) -> keras.Model:
    """The stochastic-depth paper's CIFAR ResNet with ``depth = 6n + 2`` layers.

    Args:
      name: model name (the registry key).
      depth: 6n + 2 (20, 32, 44, 56, 110, 1202 are registered).
      num_classes: classifier size (10 for CIFAR-10 and SVHN, 100 for CIFAR-100).
      input_shape: (height, width, 3); default (32, 32, 3). Spatial sizes may be None.
      sd: stochastic-depth settings (`common.SDConfig`); default `CIFAR_SD`, the paper's:
        p_L = 0.5 (``survival_prob``: the last block's survival under the default "linear" rule;
        1.0 builds a plain ResNet with no stochastic-depth layer), ``mode="batch"`` (dropped
        branches are skipped), ``scale_at="inference"``, ``seed=0`` (block i gets
        ``common.block_seed(seed, i)``). The keywords ``survival_prob``, ``sd_mode``,
        ``sd_scale_at``, ``rule`` (any of `tfsd.layers.RULES`), ``seed``, ``sync_replicas`` and
        ``sample_skip`` (None: `SAMPLE_SKIP_DEFAULT`) replace its fields (`common.sd_builder`).
      width: channel multiplier (channels rounded, at least 1), e.g. 0.25 for tests.
      mean, std: per-channel statistics of [0, 1] images; CIFAR-10's by default.
      bn_momentum, bn_epsilon: BatchNorm settings; Keras momentum 0.9 = Torch momentum 0.1.
      sync_bn: cross-replica (synchronized) BatchNorm; needs ``sync_replicas=True`` with
        skipping stochastic depth.
      zero_init_residual: zero-initialise the last BN gamma of each branch (Goyal et al. 2017).
      shortcut_pad: where the down-sampling shortcut's zero channels go (`ChannelZeroPad`):
        "after" (the paper's Torch code; default) or "symmetric" (akamaster's CIFAR ResNets,
        whose weights `tfsd.models.load_torch_resnet_weights` imports only into this form).
      include_top: add the pooled classifier (``avg_pool`` + ``predictions``). False builds a
        feature extractor (as keras.applications): no classifier weights, ``num_classes`` unused.
      pooling: with ``include_top=False``: None returns the last block's feature map
        ``[batch, h, w, channels]`` (``conv{4|5}_block{n}_out``), "avg" or "max" its global
        average (``avg_pool``, the classifier's input) or maximum (``max_pool``).

    Returns:
      A functional ``keras.Model`` named ``name`` mapping [0, 255] images to float32 logits.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2 with n >= 1, got {depth!r}.")
    return _build(
        name=name,
        stem="cifar",
        stages=cifar_stages((depth - 2) // 6),
        block="basic",
        shortcut=f"pad:{shortcut_pad}",  # ChannelZeroPad checks the placement
        conv_fan="fan_in",  # the paper's nninit.kaiming: gain sqrt(2), fan-in
        num_classes=num_classes,
        input_shape=CIFAR_INPUT_SIZE if input_shape is None else input_shape,
        sd=sd,
        width=width,
        mean=mean,
        std=std,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        sync_bn=sync_bn,
        zero_init_residual=zero_init_residual,
        include_top=include_top,
        pooling=pooling,
    )


@common.sd_builder(IMAGENET_SD)
def resnet(
    *,
    name: str,
    block: str,
    blocks: Sequence[int],
    num_classes: int,
    input_shape: tuple[int | None, int | None, int] | None = None,
    sd: common.SDConfig,
    width: float = 1.0,
    mean: Sequence[float] = common.IMAGENET_MEAN,
    std: Sequence[float] = common.IMAGENET_STD,
    bn_momentum: float = 0.9,
    bn_epsilon: float = 1e-5,
    sync_bn: bool = False,
    zero_init_residual: bool = False,
    include_top: bool = True,
    pooling: str | None = None,
) -> keras.Model:
    """ImageNet ResNet v1.5 (torchvision/timm layout) with stochastic depth on every block.

    Args:
      name: model name (the registry key).
      block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101/152).
      blocks: blocks per stage, four integers.
      num_classes: classifier size (1000 for ImageNet).
      input_shape: (height, width, 3); default (224, 224, 3). Spatial sizes may be None.
      sd: as in `cifar_resnet`, default `IMAGENET_SD`: p_L = 0.8 (docs/models.md, "Reference:
        tfsd/models/resnet.py").
      width, bn_momentum, bn_epsilon, sync_bn: as in `cifar_resnet`.
      mean, std: per-channel statistics of [0, 1] images; ImageNet's by default.
      zero_init_residual: zero-initialise the last BN gamma of each branch; False as torchvision.
      include_top, pooling: as in `cifar_resnet`.

    Returns:
      A functional ``keras.Model`` named ``name`` mapping [0, 255] images to float32 logits.
    """
    blocks = tuple(blocks)
    if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in blocks):
        raise ValueError(f"blocks must be positive integers, got {blocks!r}.")
    return _build(
        name=name,
        stem="imagenet",
        stages=imagenet_stages(blocks),
        block=block,
        shortcut="projection",
        conv_fan="fan_out",  # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
        num_classes=num_classes,
        input_shape=IMAGENET_INPUT_SIZE if input_shape is None else input_shape,
        sd=sd,
        width=width,
        mean=mean,
        std=std,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
        sync_bn=sync_bn,
        zero_init_residual=zero_init_residual,
        include_top=include_top,
        pooling=pooling,
    )


# -------------------------------------------------------------------------------------------------
# Registered variants: one line each.
# -------------------------------------------------------------------------------------------------


def _register_cifar(name: str, depth: int) -> None:
    n = (depth - 2) // 6
    info = ModelInfo(
        CIFAR_INPUT_SIZE, common.CIFAR10_MEAN, common.CIFAR10_STD, 3 * n, 3 * n, CIFAR_SD
    )
    register(name, cifar_resnet, info=info, depth=depth)


def _register_imagenet(name: str, block: str, blocks: tuple[int, ...]) -> None:
    info = ModelInfo(
        IMAGENET_INPUT_SIZE,
        common.IMAGENET_MEAN,
        common.IMAGENET_STD,
        sum(blocks),
        sum(blocks),
        IMAGENET_SD,
    )
    register(name, resnet, info=info, block=block, blocks=blocks)


# CIFAR (6n + 2 layers, n = 3, 5, 7, 9, 18, 200); 110 and 1202 are the paper's CIFAR models.
for _depth in (20, 32, 44, 56, 110, 152, 1202):  # 152: the paper's SVHN model (n = 25)
    _register_cifar(f"cifar_resnet{_depth}", _depth)
# ImageNet v1.5 (He et al. 2016, table 1).
_register_imagenet("resnet18", "basic", (2, 2, 2, 2))
_register_imagenet("resnet34", "basic", (3, 4, 6, 3))
_register_imagenet("resnet50", "bottleneck", (3, 4, 6, 3))
_register_imagenet("resnet101", "bottleneck", (3, 4, 23, 3))
_register_imagenet("resnet152", "bottleneck", (3, 8, 36, 3))
# Tiny variant for tests of the training loop, export and serving (timm's test_efficientnet): a
# CIFAR ResNet-8 (one block per stage) at width 0.25 and 16 x 16 pixels; not a model to train.
register(
    "test_resnet",
    cifar_resnet,
    info=ModelInfo((16, 16, 3), common.CIFAR10_MEAN, common.CIFAR10_STD, 3, 3, CIFAR_SD),
    depth=8,
    width=0.25,
)
# Loading a saved cifar_resnet1202 in a fresh process must not hit the recursion limit.
_ensure_recursion_limit(3 * 200)
