"""CIFAR ResNet-20/56/110 on Fashion-MNIST: the stochastic-depth paper's CIFAR recipe, adapted.

Command (ResNet-56 shown; variants resnet20, resnet56, resnet110), offline after
``apt-get install dataset-fashion-mnist``:
  python -m tfsd.train --config=fashion_mnist_resnet56 --model_dir=DIR [--data_dir=TFDS_DIR]
  runlocal (the real data, 2 CPU cores, minutes): --config=fashion_mnist_resnet20:runlocal

Data: TFDS's own ``fashion_mnist`` (60,000 train / 10,000 test, 28 × 28 greyscale, 10 classes),
prepared on first use from Debian's files (``data.source_dir``) by `tfsd.data.prepare`. Their
gzip bytes differ from the upstream files TFDS registered (no file name in the gzip header), so
the config accepts them explicitly (``data.accept_checksums=True``); the decoded content is then
validated (counts, 6,000 / 1,000 per class, shapes, labels, train mean / std) and the accepted
checksums are recorded next to the prepared data. Prepared once elsewhere, set
``--config.data.source_dir=""``.

How the images enter: at their native 28 × 28 (``model.image_size=28``), not resized to 32 (a
resize would only interpolate; the CIFAR ResNets end in global average pooling, so 28 gives
feature maps of 28, 14 and 7). Greyscale is decoded to three equal channels (TF's
``decode_image(channels=3)``), so the model, its exports and the serving signatures are the
standard 3-channel ones; it costs only the stem's extra input channels. Normalised with the
train split's mean / std (0.2860 / 0.3530). Augmentation: the paper's CIFAR one (after He et al.
2016), scaled to 28 px: zero-pad 3 px (``image_size // 8``, the same 12.5% shift range as 4 px at
32), random 28 × 28 crop, random horizontal flip (a mirrored garment keeps its class; crop +
flip is also the Fashion-MNIST augmentation of Zhong et al., "Random Erasing Data
Augmentation", AAAI 2020). No RandAugment, MixUp or CutMix: the paper used none.

Recipe (Huang et al. 2016, Sec. 4): SGD Nesterov 0.9, lr 0.1 ÷10 at 50% and 75% of 500 epochs,
batch 128, weight decay 1e-4, batch-wise gates with compute skipping, linear decay to p_L = 0.5.
Expected test error: not published for Fashion-MNIST; the paper's CIFAR-10 ResNet-110 is 6.41%
(constant depth) → 5.25% (stochastic depth). Measured here at a small budget: see
benchmarks/README.md (benchmarks/accuracy.py).

runlocal: the real data at a budget for 2 CPU cores: one epoch (468 steps of batch 128), cosine
lr from 0.1 after a 0.1-epoch warm-up, stochastic depth as above, the encoded examples cached in
RAM. resnet20:runlocal reached 80.75% test top-1 (seed 0; 2026-12-05, the 2-core VM shared with
other jobs at load average ~15: 16 min of training at ~60 images/s, 41 s of eval); the run's
pictures and confusion matrix are in docs/images/fashion_mnist_resnet20_runlocal/, and
tests/test_fashion_mnist.py asserts >= 75%. resnet56:runlocal and resnet110:runlocal keep their
own depth at the same budget (about 3× and 6× the step time), not measured separately;
benchmarks/accuracy.py measures ResNet-56 at smaller budgets.
"""

import ml_collections

from tfsd import config_lib
from tfsd.data import prepare
from tfsd.models import common

VARIANTS = ("resnet20", "resnet56", "resnet110")


def parse_arg(arg: str | None) -> tuple[str, bool]:
    """``"resnet56"`` → ``("resnet56", False)``, ``"resnet56,runlocal"`` → ``(…, True)``."""
    return config_lib.parse_variant(
        arg, VARIANTS, "Fashion-MNIST", "--config=fashion_mnist_VARIANT[:runlocal]"
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The recipe of the module docstring for the variant named by ``arg``."""
    variant, runlocal = parse_arg(arg)
    c = config_lib.cifar_resnet("fashion_mnist", f"cifar_{variant}")
    c.model.image_size = 28  # native size, see the module docstring
    c.model.overrides.mean = common.FASHION_MNIST_MEAN
    c.model.overrides.std = common.FASHION_MNIST_STD
    _, c.data.source_dir = prepare.DEBIAN_SOURCES["fashion_mnist"]
    c.data.accept_checksums = True  # Debian's recompressed files; content validated instead
    if runlocal:
        c.num_epochs = 1.0
        c.lr.schedule = "cosine"
        c.lr.warmup_epochs = 0.1
        c.data.cache = True
        c.steps_per_loop = 50
        c.checkpoint_every_steps = 500
    return c
