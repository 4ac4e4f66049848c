"""The ``synthetic`` source: a learnable, deterministic image dataset generated on the fly, offline.

Every example is a function of its split and index (`synthetic_example`), so the pipeline shuffles
indices and generates each image after the shuffle; nothing is stored or downloaded. The runlocal
modes of every config train on it.
"""

import math

import ml_collections
import tensorflow as tf

from tfsd.data import positions
from tfsd.data.config import DatasetInfo, Plan, auto, check_index_source
from tfsd.data.seeds import fold, root_seed

NAME = "synthetic"
ENCODED = False  # `load` yields decoded images.

# Fixed seed of the synthetic dataset's *content* (prototypes and nuisances); the `seed` argument
# of build_dataset only drives shuffling and augmentation. The digits are the paper's arXiv id.
_SYNTHETIC_SEED = 160309382
_SYNTHETIC_DEFAULT_CLASSES = 10
_SYNTHETIC_SPLIT_TAGS = {"train": 0, "eval": 1}


def resolve(c: ml_collections.ConfigDict, data_dir: str | None) -> Plan:
    """The `Plan` of a validated config naming the synthetic dataset (``data_dir`` is unused)."""
    del data_dir
    check_index_source(c, "the synthetic dataset")
    info = DatasetInfo(
        num_classes=c.num_classes or _SYNTHETIC_DEFAULT_CLASSES,
        num_train_examples=c.synthetic_train_size,
        num_eval_examples=c.synthetic_eval_size,
        train_split="train",
        eval_split="eval",
        native_image_size=None,  # generated at whatever size is asked for.
    )
    # Synthetic classes are oriented gratings and placed blobs, so a mirror image is (in general)
    # another class: never flip.
    return Plan("synthetic", info, auto(c.preprocess, "none"), False, None, None)


def synthetic_example(
    split: str, index: int | tf.Tensor, *, image_size: int, num_classes: int
) -> tuple[tf.Tensor, tf.Tensor]:
    """Generates example ``index`` of a synthetic split: a learnable, deterministic image.

    Each class ``c`` has a prototype drawn from a stateless seed of ``c``: an oriented sinusoidal
    grating (frequency 1.5-5 cycles per image, any angle, a colour direction) plus a Gaussian blob
    of a class colour at a class position. Each example draws its label and nuisances from a seed
    of ``(split, index)``: background colour, grating phase, +-10% frequency and +-6 degree angle
    jitter, contrast 0.6-1.2, a +-8% blob shift and Gaussian pixel noise (sigma 8). Geometry is in
    image-relative units, so any resolution shows the same pattern; the background dominates the
    mean colour, so classes are told apart by structure rather than by average colour.

    Args:
        split: "train" or "eval". The splits share the class prototypes (same distribution) but
            use disjoint nuisance seeds, so no eval image is a train image.
        index: example index, a Python int or an integer scalar tensor.
        image_size: side of the square image in pixels.
        num_classes: number of classes; labels are uniform in ``[0, num_classes)``.

    Returns:
        ``(image, label)``: float32 ``[image_size, image_size, 3]`` in [0, 255] and int32 scalar.
    """
    if split not in _SYNTHETIC_SPLIT_TAGS:
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    data_seed = root_seed(_SYNTHETIC_SEED)
    example_seed = fold(data_seed, 1, _SYNTHETIC_SPLIT_TAGS[split], index)
    label = tf.random.stateless_uniform(
        [], fold(example_seed, 0), minval=0, maxval=num_classes, dtype=tf.int32
    )

    # Class prototype: everything the label determines.
    p = tf.random.stateless_uniform([10], fold(data_seed, 0, label))
    frequency = 1.5 + 3.5 * p[0]  # cycles per image; <= 5 keeps >= 6 px per cycle at 32 px.
    angle = math.pi * p[1]
    grating_colour = tf.math.l2_normalize(2.0 * p[2:5] - 1.0) * 70.0
    blob_centre = 0.2 + 0.6 * p[5:7]  # (y, x), away from the border.
    blob_colour = 255.0 * p[7:10]

    # Nuisance: everything else, different for every (split, index).
    n = tf.random.stateless_uniform([9], fold(example_seed, 1))
    phase = 2.0 * math.pi * n[0]
    frequency *= 0.9 + 0.2 * n[1]
    angle += 0.2 * (n[2] - 0.5)
    contrast = 0.6 + 0.6 * n[3]
    background = 40.0 + 175.0 * n[4:7]
    blob_centre += 0.16 * (n[7:9] - 0.5)

    # Pixel-centre coordinates in [0, 1], so the pattern is resolution independent.
    coords = (tf.range(image_size, dtype=tf.float32) + 0.5) / image_size
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    wave = tf.sin(2.0 * math.pi * frequency * (x * tf.cos(angle) + y * tf.sin(angle)) + phase)
    blob_sq_dist = (y - blob_centre[0]) ** 2 + (x - blob_centre[1]) ** 2
    blob = tf.exp(-blob_sq_dist / (2.0 * 0.12**2))
    image = (
        background
        + contrast * wave[..., None] * grating_colour
        + blob[..., None] * (blob_colour - background)
    )
    noise = tf.random.stateless_normal([image_size, image_size, 3], fold(example_seed, 2))
    image = tf.clip_by_value(image + 8.0 * noise, 0.0, 255.0)
    return image, label


# Index stream: shuffled indices, each generated after the shuffle.
elements = positions.index_elements


def load(plan: Plan, split: str, image_size: int, index: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """``(image, label)`` of example ``index`` of ``split`` (`synthetic_example`)."""
    return synthetic_example(split, index, image_size=image_size, num_classes=plan.info.num_classes)
