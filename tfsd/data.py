"""Input pipelines for training image classifiers: synthetic, TFDS and image-folder sources.

Every pipeline yields ``(images, labels)`` with images float32 ``[B, S, S, 3]`` holding **raw pixel
values in [0, 255]**: the tfsd models normalise inside themselves, so nothing here subtracts a mean
or divides by a standard deviation. Labels are int32 ``[B]``, or float32 one-hot ``[B, C]`` when
MixUp/CutMix is on (train split only).

Preprocessing follows these references:

* **Inception crop** (train, ImageNet-like data): Szegedy et al., "Going deeper with
  convolutions", CVPR 2015 (crops of 8%-100% of the area, aspect ratio 3/4-4/3), with the
  settings of the EfficientNet TPU reference ``tensorflow/tpu/models/official/efficientnet/
  preprocessing.py``: ``min_object_covered=0.1``, 10 attempts, center-crop fallback, random
  horizontal flip, bicubic resize, and ``decode_and_crop_jpeg`` so JPEGs decode only the crop
  window. (TF-slim's ``inception_preprocessing.py`` differs: 5%-100%, 100 attempts, bilinear.)
* **Center crop** (eval): the EfficientNet reference's ``CROP_PADDING = 32``: keep the central
  ``S / (S + 32)`` of the shorter side (224/256 = 0.875 at S = 224), then resize to S.
* **CIFAR** (train): the stochastic-depth paper's recipe (Huang et al., "Deep Networks with
  Stochastic Depth", ECCV 2016, arXiv:1603.09382, after He et al. 2016): zero-pad 4 px, random
  32x32 crop, random horizontal flip. SVHN gets no augmentation and trains on train+extra, as in
  that paper.
* **RandAugment** (Cubuk et al., 2020), **MixUp** (Zhang et al., 2018) and **CutMix** (Yun et al.,
  2019) come from Keras core layers (``keras.layers.RandAugment``/``MixUp``/``CutMix``), driven by
  explicit stateless seeds so the stream is reproducible (see ``_SeedStream``). When both MixUp
  and CutMix are on, each batch uses one of them with probability 0.5, like timm's ``Mixup``.

Determinism and resume: the train stream is a pure function of ``(seed, start_step)``, so a
resumed run rebuilds it at its step (``build_dataset(..., start_step=step)``) and no iterator state
is ever checkpointed (an ImageNet shuffle buffer is ~1 GB per checkpoint, and MirroredStrategy's
distributed iterator cannot be saved at all). Augmentation is stateless, keyed on the example's
position in the global stream. The synthetic and folder sources shuffle *indices* with
``tf.random.experimental.index_shuffle`` (a stateless permutation per epoch), so resuming at any
step is free. TFDS shuffles each epoch with a shuffle buffer seeded by ``(seed, epoch)``: resuming
starts at the resumed epoch directly and skips the examples already seen in it (read but not
decoded: at most one epoch of encoded records). TFDS epochs are shuffled in blocks of
``shuffle_buffer`` records (a stateless permutation per block, block boundaries moved every epoch).
"""

import contextlib
import functools
import hashlib
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import keras
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from ml_collections import config_dict

AUTOTUNE = tf.data.AUTOTUNE

# EfficientNet TPU reference: eval keeps the central image_size / (image_size + 32) of the image.
CROP_PADDING = 32

# Fixed seed of the synthetic dataset's *content* (prototypes and nuisances); the `seed` argument
# of build_dataset only drives shuffling and augmentation. The digits are the paper's arXiv id.
_SYNTHETIC_SEED = 160309382
_SYNTHETIC_DEFAULT_CLASSES = 10
_SYNTHETIC_SPLIT_TAGS = {"train": 0, "eval": 1}

_FOLDER_PREFIX = "folder:"
# What tf.io.decode_image reads (GIF: first frame). Anything else in a class folder is skipped.
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

_PREPROCESS_MODES = ("auto", "inception", "cifar", "none")

# Stream tags folded into the user seed so shuffling, per-example augmentation and batch mixing
# draw from independent random streams.
_SHUFFLE_TAG, _AUGMENT_TAG, _MIX_TAG = 1, 2, 3


class _TfdsSpec(NamedTuple):
    """How tfsd uses one TFDS dataset."""

    train_split: str  # TFDS split expression used for training by default.
    eval_split: str  # ... and for evaluation.
    preprocess: str  # what preprocess="auto" means for this dataset.
    flip: bool  # whether a horizontal flip preserves the label.


# Columns: train split, eval split, auto preprocessing, flip is label-preserving.
_TFDS_SPECS = {
    "imagenet2012": _TfdsSpec("train", "validation", "inception", True),
    "cifar10": _TfdsSpec("train", "test", "cifar", True),
    "cifar100": _TfdsSpec("train", "test", "cifar", True),
    # Paper protocol: train+extra (604k digits), no augmentation, digits are not mirror-symmetric.
    "svhn_cropped": _TfdsSpec("train+extra", "test", "none", False),
    # Imagenette ships train/validation only; "validation" is its held-out split.
    "imagenette": _TfdsSpec("train", "validation", "inception", True),
    # tf_flowers ships a single 3,670-image "train" split: hold out the last 10%.
    "tf_flowers": _TfdsSpec("train[:90%]", "train[90%:]", "inception", True),
}


def default_config() -> ml_collections.ConfigDict:
    """Returns the data config with every field at its default.

    The training config nests this as ``config.data``; override fields from the command line,
    e.g. ``--config.data.name=cifar10 --config.data.mixup_alpha=0.2``.
    """
    c = ml_collections.ConfigDict()
    # "synthetic" (offline, generated on the fly), a TFDS name (imagenet2012, cifar10, cifar100,
    # svhn_cropped, imagenette, tf_flowers; a builder config may follow, e.g.
    # "imagenette/320px-v2"), or "folder:/abs/path" with one sub-folder of images per class.
    c.name = "synthetic"
    # Number of classes. None = the dataset's own (synthetic: 10). Synthetic generates any count;
    # for TFDS and folders a value is checked against the dataset and must match.
    c.num_classes = config_dict.placeholder(int)
    # TFDS split expressions (e.g. "train[:95%]"). None = the dataset's default (see README).
    # Synthetic and folder sources have fixed "train"/"eval" splits and reject any value here.
    c.train_split = config_dict.placeholder(str)
    c.eval_split = config_dict.placeholder(str)
    # "auto" | "inception" | "cifar" | "none". auto: inception for ImageNet-like data and folders,
    # cifar for CIFAR-10/100, none (resize only) for SVHN and synthetic.
    c.preprocess = "auto"
    # RandAugment, train only: ops per image and magnitude on the 0-10 scale of the TF reference
    # and timm ("rand-m9" = 9). Keras samples each op's strength in [0, magnitude / 10]. 0 = off.
    c.randaugment_num_ops = 2
    c.randaugment_magnitude = 0.0
    # MixUp / CutMix Beta(alpha, alpha) concentration, train only; 0 = off. Typical: 0.2 / 1.0.
    # CutMix alpha must be <= 1 (a bound of keras.layers.CutMix). Both on: 50/50 per batch.
    c.mixup_alpha = 0.0
    c.cutmix_alpha = 0.0
    # TFDS only: shuffle buffer in examples, held *encoded* (~110 KB each for ImageNet JPEGs,
    # ~2.5 KB for CIFAR PNGs). Synthetic and folder sources shuffle indices exactly instead.
    c.shuffle_buffer = 10_000
    # Synthetic split sizes (examples per epoch); images are generated from their index.
    c.synthetic_train_size = 50_000
    c.synthetic_eval_size = 10_000
    # Folder source: fraction of images held out for eval, chosen by a stable hash of each file's
    # path relative to the root, so adding images never moves existing ones between splits.
    c.folder_eval_fraction = 0.1
    # TFDS only: keep the encoded examples in host RAM after the first pass. Worth it for CIFAR or
    # SVHN (a few hundred MB); not for ImageNet (~150 GB). No iterator state is checkpointed,
    # so the cache never reaches a checkpoint. Synthetic and folder sources reject it (nothing
    # to cache before the shuffle).
    c.cache = False
    # Eval: drop the last partial batch. Needed for static shapes (TPU/XLA); drops < B examples.
    c.eval_drop_remainder = False
    return c


class DatasetInfo(NamedTuple):
    """What the training loop needs to know about a dataset before building it."""

    num_classes: int
    num_train_examples: int  # whole train split, all hosts together.
    num_eval_examples: int
    train_split: str
    eval_split: str
    native_image_size: int | None  # side of the stored square images; None if sizes vary.
    # Label names in label order (TFDS ClassLabel names, folder names); None if unnamed.
    class_names: tuple[str, ...] | None = None


class DatasetNotPreparedError(FileNotFoundError):
    """A TFDS dataset is not in ``data_dir``; the message says how to prepare it."""


# ---------------------------------------------------------------------------------------------
# Config resolution
# ---------------------------------------------------------------------------------------------


class _Plan(NamedTuple):
    """A validated config resolved against its source."""

    kind: str  # "synthetic" | "tfds" | "folder"
    info: DatasetInfo
    preprocess: str  # "inception" | "cifar" | "none" (auto resolved)
    flip: bool
    builder: Any  # tfds.core.DatasetBuilder for TFDS sources, else None.
    files: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] | None  # folder: split -> files.


def _merged_config(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Defaults overlaid with ``config``; unknown fields are an error (they are usually typos)."""
    merged = default_config()
    unknown = sorted(set(config.keys()) - set(merged.keys()))
    if unknown:
        raise ValueError(f"Unknown data config field(s) {unknown}; known: {sorted(merged.keys())}")
    for key in config.keys():
        merged[key] = config[key]
    return merged


def _validate(c: ml_collections.ConfigDict) -> None:
    if c.preprocess not in _PREPROCESS_MODES:
        raise ValueError(f"preprocess must be one of {_PREPROCESS_MODES}, got {c.preprocess!r}")
    if c.num_classes is not None and c.num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {c.num_classes}")
    if c.randaugment_num_ops < 0:
        raise ValueError(f"randaugment_num_ops must be >= 0, got {c.randaugment_num_ops}")
    if not 0 <= c.randaugment_magnitude <= 10:
        raise ValueError(
            f"randaugment_magnitude is on the 0-10 scale, got {c.randaugment_magnitude}"
        )
    if c.mixup_alpha < 0:
        raise ValueError(f"mixup_alpha must be >= 0, got {c.mixup_alpha}")
    if not 0 <= c.cutmix_alpha <= 1:
        raise ValueError(f"cutmix_alpha must be in [0, 1] (Keras CutMix), got {c.cutmix_alpha}")
    if c.shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {c.shuffle_buffer}")
    if c.synthetic_train_size < 1 or c.synthetic_eval_size < 1:
        raise ValueError("synthetic_train_size and synthetic_eval_size must be >= 1")
    if not 0 < c.folder_eval_fraction < 1:
        raise ValueError(f"folder_eval_fraction must be in (0, 1), got {c.folder_eval_fraction}")


def _resolve(c: ml_collections.ConfigDict, data_dir: str | None) -> _Plan:
    """Resolves a merged config (see ``_merged_config``) against its data source."""
    _validate(c)
    name = c.name
    if name == "synthetic":
        return _resolve_synthetic(c)
    if name.startswith(_FOLDER_PREFIX):
        return _resolve_folder(c)
    if name.split("/")[0] in _TFDS_SPECS:
        return _resolve_tfds(c, data_dir)
    raise ValueError(
        f"Unknown dataset name {name!r}: use 'synthetic', one of the TFDS datasets "
        f"{sorted(_TFDS_SPECS)}, or '{_FOLDER_PREFIX}/abs/path'."
    )


def _check_index_source(c: ml_collections.ConfigDict, what: str) -> None:
    """Rejects settings that need a stored, split-named dataset (synthetic and folder have none)."""
    if c.train_split is not None or c.eval_split is not None:
        raise ValueError(
            f"{what} has fixed 'train'/'eval' splits; leave train_split and eval_split unset "
            f"(got {c.train_split!r}, {c.eval_split!r})."
        )
    if c.cache:
        raise ValueError(
            f"cache=True is not supported for {what}: it shuffles indices and reads or "
            "generates each image after the shuffle, so there is nothing to cache. Set cache=False."
        )


def _auto(preprocess: str, default: str) -> str:
    return default if preprocess == "auto" else preprocess


def _resolve_synthetic(c: ml_collections.ConfigDict) -> _Plan:
    _check_index_source(c, "the synthetic dataset")
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
    return _Plan("synthetic", info, _auto(c.preprocess, "none"), False, None, None)


# ---------------------------------------------------------------------------------------------
# Stateless seeds
# ---------------------------------------------------------------------------------------------


def _fold(seed: tf.Tensor, *data: Any) -> tf.Tensor:
    """Folds integers into a stateless seed: a new, independent int64 ``[2]`` seed."""
    seed = tf.cast(seed, tf.int64)
    for d in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
    return seed


def _root_seed(seed: int | tf.Tensor) -> tf.Tensor:
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])


# ---------------------------------------------------------------------------------------------
# Synthetic source
# ---------------------------------------------------------------------------------------------


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
    data_seed = _root_seed(_SYNTHETIC_SEED)
    example_seed = _fold(data_seed, 1, _SYNTHETIC_SPLIT_TAGS[split], index)
    label = tf.random.stateless_uniform(
        [], _fold(example_seed, 0), minval=0, maxval=num_classes, dtype=tf.int32
    )

    # Class prototype: everything the label determines.
    p = tf.random.stateless_uniform([10], _fold(data_seed, 0, label))
    frequency = 1.5 + 3.5 * p[0]  # cycles per image; <= 5 keeps >= 6 px per cycle at 32 px.
    angle = math.pi * p[1]
    grating_colour = tf.math.l2_normalize(2.0 * p[2:5] - 1.0) * 70.0
    blob_centre = 0.2 + 0.6 * p[5:7]  # (y, x), away from the border.
    blob_colour = 255.0 * p[7:10]

    # Nuisance: everything else, different for every (split, index).
    n = tf.random.stateless_uniform([9], _fold(example_seed, 1))
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
    noise = tf.random.stateless_normal([image_size, image_size, 3], _fold(example_seed, 2))
    image = tf.clip_by_value(image + 8.0 * noise, 0.0, 255.0)
    return image, label


# ---------------------------------------------------------------------------------------------
# Folder source
# ---------------------------------------------------------------------------------------------


def _is_eval_file(relative_path: str, eval_fraction: float) -> bool:
    # sha256, not hash(): Python's string hash is salted per process.
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < eval_fraction


@functools.lru_cache(maxsize=8)
def _list_folder(
    root: str, eval_fraction: float
) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, ...], tuple[int, ...]]]]:
    """Lists ``root/<class>/**/<image>`` once per process: class names and files per split."""
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist or is not a directory.")
    classes = tuple(
        sorted(
            d.rstrip("/")
            for d in tf.io.gfile.listdir(root)
            if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(root, d))
        )
    )
    if not classes:
        raise ValueError(
            f"Image folder {root!r} has no class sub-folders; expected {root}/<class>/<image>."
        )
    files: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "eval": ([], [])}
    skipped = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        found = 0
        for dirpath, _, filenames in tf.io.gfile.walk(class_dir):
            for filename in sorted(filenames):
                path = os.path.join(dirpath, filename)
                if filename.startswith("."):
                    continue
                if not filename.lower().endswith(_IMAGE_EXTENSIONS):
                    skipped.append(path)
                    continue
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                split = "eval" if _is_eval_file(relative, eval_fraction) else "train"
                files[split][0].append(path)
                files[split][1].append(label)
                found += 1
        if not found:
            raise ValueError(
                f"Class folder {class_dir!r} has no images (looked for {_IMAGE_EXTENSIONS})."
            )
    if skipped:
        logging.warning(
            "Image folder %s: skipped %d file(s) that are not %s, e.g. %s",
            root,
            len(skipped),
            _IMAGE_EXTENSIONS,
            skipped[:3],
        )
    return classes, {k: (tuple(p), tuple(lab)) for k, (p, lab) in files.items()}


def _resolve_folder(c: ml_collections.ConfigDict) -> _Plan:
    _check_index_source(c, "a folder dataset")
    root = c.name[len(_FOLDER_PREFIX) :]
    if not root:
        raise ValueError(f"Folder dataset name needs a path: '{_FOLDER_PREFIX}/abs/path'.")
    classes, files = _list_folder(root, float(c.folder_eval_fraction))
    if c.num_classes is not None and c.num_classes != len(classes):
        raise ValueError(
            f"num_classes={c.num_classes} but {root!r} has {len(classes)} class folders."
        )
    for split, (paths, _) in files.items():
        if not paths:
            raise ValueError(
                f"Image folder {root!r}: the {split} split is empty with folder_eval_fraction="
                f"{c.folder_eval_fraction}; add images or change the fraction."
            )
    info = DatasetInfo(
        num_classes=len(classes),
        num_train_examples=len(files["train"][0]),
        num_eval_examples=len(files["eval"][0]),
        train_split="train",
        eval_split="eval",
        native_image_size=None,
        class_names=classes,
    )
    return _Plan("folder", info, _auto(c.preprocess, "inception"), True, None, files)


# ---------------------------------------------------------------------------------------------
# TFDS source
# ---------------------------------------------------------------------------------------------


def _not_prepared_message(name: str, data_dir: str) -> str:
    base = name.split("/")[0]
    if base == "imagenet2012":
        return (
            f"TFDS dataset {name!r} is not prepared in {data_dir!r}. ImageNet needs a manual "
            "download: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (~150 GB) from "
            f"https://image-net.org/, put them in {os.path.join(data_dir, 'downloads', 'manual')}/ "
            f"and run:\n  tfds build imagenet2012 --data_dir={data_dir}"
        )
    return (
        f"TFDS dataset {name!r} is not prepared in {data_dir!r}. On a machine with internet "
        f"access run:\n  tfds build {name} --data_dir={data_dir}\nthen copy the resulting "
        f"{base}/ folder into {data_dir} (or point data_dir at a gs:// bucket holding it). "
        "tfsd never downloads data itself."
    )


def _resolve_tfds(c: ml_collections.ConfigDict, data_dir: str | None) -> _Plan:
    spec = _TFDS_SPECS[c.name.split("/")[0]]
    builder = tfds.builder(c.name, data_dir=data_dir)
    if not builder.is_prepared():
        raise DatasetNotPreparedError(_not_prepared_message(c.name, str(builder.data_dir_root)))
    features = builder.info.features
    num_classes = features["label"].num_classes
    if c.num_classes is not None and c.num_classes != num_classes:
        raise ValueError(f"num_classes={c.num_classes} but {c.name} has {num_classes} classes.")
    train_split = c.train_split or spec.train_split
    eval_split = c.eval_split or spec.eval_split
    counts = {}
    for split in (train_split, eval_split):
        try:
            counts[split] = builder.info.splits[split].num_examples
        except (KeyError, ValueError) as e:
            raise ValueError(
                f"Split {split!r} is not valid for {c.name}; available: "
                f"{sorted(builder.info.splits)}."
            ) from e
    height, width = features["image"].shape[:2]
    info = DatasetInfo(
        num_classes=num_classes,
        num_train_examples=counts[train_split],
        num_eval_examples=counts[eval_split],
        train_split=train_split,
        eval_split=eval_split,
        native_image_size=height if height is not None and height == width else None,
        class_names=tuple(features["label"].names),
    )
    return _Plan("tfds", info, _auto(c.preprocess, spec.preprocess), spec.flip, builder, None)


def get_dataset_info(config: Mapping[str, Any], *, data_dir: str | None = None) -> DatasetInfo:
    """Validates ``config`` and describes its dataset without reading any image.

    Args:
        config: the data config (``default_config()`` with overrides).
        data_dir: TFDS data directory (local or ``gs://``); None = TFDS's default
            (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Unused by other sources.

    Returns:
        The dataset's ``DatasetInfo``.

    Raises:
        ValueError: the config is invalid or does not match the dataset.
        DatasetNotPreparedError: a TFDS dataset is not in ``data_dir`` (says how to prepare it).
        FileNotFoundError: a folder dataset's path does not exist.
    """
    return _resolve(_merged_config(config), data_dir).info


# ---------------------------------------------------------------------------------------------
# Image ops (pure TF, usable eagerly and inside Dataset.map)
# ---------------------------------------------------------------------------------------------


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes to ``[image_size, image_size, 3]`` float32 in [0, 255], aspect ratio not kept.

    Bicubic, as the EfficientNet reference; bicubic overshoots, hence the clip back to [0, 255].
    Bicubic resizing to the same size is an exact identity, so 32x32 CIFAR passes unchanged.
    """
    image = tf.cast(image, tf.float32)
    if image.shape[0] == image_size and image.shape[1] == image_size:
        return image
    image = tf.image.resize(image, [image_size, image_size], method="bicubic")
    return tf.clip_by_value(image, 0.0, 255.0)


def _center_crop_window(shape: tf.Tensor, image_size: int) -> tf.Tensor:
    """``[y, x, h, w]`` of the EfficientNet reference eval crop of an image of ``shape``."""
    height, width = shape[0], shape[1]
    side = tf.cast(
        image_size / (image_size + CROP_PADDING) * tf.cast(tf.minimum(height, width), tf.float32),
        tf.int32,
    )
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side])


def _inception_crop_window(shape: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """``[y, x, h, w]`` of a random Inception crop, or the center crop if sampling failed."""
    shape = tf.cast(shape, tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.1,  # reference value; with the whole image as box ~ area >= 10%.
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    # After 10 failed attempts the op returns the whole image; the reference then center-crops.
    failed = tf.logical_and(tf.equal(size[0], shape[0]), tf.equal(size[1], shape[1]))
    return tf.where(failed, _center_crop_window(shape, image_size), window)


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    crop = tf.slice(image, [window[0], window[1], 0], [window[2], window[3], -1])
    crop.set_shape([None, None, image.shape[-1]])  # slice forgets the static channel count.
    return crop


def _decode_and_crop(image_bytes: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]):
    """Decodes only ``window_fn(image_shape)`` of a JPEG; other formats decode, then crop."""

    def jpeg():
        window = window_fn(tf.image.extract_jpeg_shape(image_bytes))
        return tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other():
        image = decode_image(image_bytes)
        return _crop(image, window_fn(tf.shape(image)))

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def decode_image(image_bytes: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG/PNG/BMP/GIF (first frame) bytes to uint8 ``[H, W, 3]``."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _flip(image: tf.Tensor, seed: tf.Tensor, flip: bool) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed) if flip else image


def inception_crop(
    image: tf.Tensor, seed: tf.Tensor, image_size: int, *, flip: bool = True
) -> tf.Tensor:
    """Inception-style train crop of a decoded image (see module docstring for the recipe).

    Args:
        image: ``[H, W, 3]`` image, any real dtype, values in [0, 255].
        seed: int32/int64 ``[2]`` stateless seed; the same seed gives the same crop and flip.
        image_size: output side.
        flip: random horizontal flip (off for data whose labels are not mirror-invariant).

    Returns:
        float32 ``[image_size, image_size, 3]`` in [0, 255].
    """
    window = _inception_crop_window(tf.shape(image), _fold(seed, 0), image_size)
    return _flip(resize(_crop(image, window), image_size), _fold(seed, 1), flip)


def decode_and_inception_crop(
    image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int, *, flip: bool = True
) -> tf.Tensor:
    """``inception_crop`` of encoded image bytes; JPEGs only decode the crop window."""
    crop_seed = _fold(seed, 0)
    image = _decode_and_crop(
        image_bytes, lambda shape: _inception_crop_window(shape, crop_seed, image_size)
    )
    return _flip(resize(image, image_size), _fold(seed, 1), flip)


def center_crop(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Eval crop: the central ``image_size / (image_size + 32)`` of the shorter side, resized.

    Args:
        image: ``[H, W, 3]`` image, values in [0, 255].
        image_size: output side.

    Returns:
        float32 ``[image_size, image_size, 3]`` in [0, 255].
    """
    return resize(_crop(image, _center_crop_window(tf.shape(image), image_size)), image_size)


def decode_and_center_crop(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
    """``center_crop`` of encoded image bytes; JPEGs only decode the crop window."""
    image = _decode_and_crop(image_bytes, lambda shape: _center_crop_window(shape, image_size))
    return resize(image, image_size)


def cifar_crop(
    image: tf.Tensor, seed: tf.Tensor, image_size: int, *, flip: bool = True
) -> tf.Tensor:
    """CIFAR train augmentation: zero-pad, random ``image_size`` crop, random horizontal flip.

    The pad is ``image_size // 8`` px: 4 px at 32x32, the paper's setting, scaled so the shift
    range stays 12.5% of the image at other sizes. Zero padding as in the paper's Torch code
    (fb.resnet.torch ``RandomCrop``). Images not at ``image_size`` are resized first.

    Args:
        image: ``[H, W, 3]`` image, values in [0, 255].
        seed: int32/int64 ``[2]`` stateless seed.
        image_size: output side.
        flip: random horizontal flip.

    Returns:
        float32 ``[image_size, image_size, 3]`` in [0, 255].
    """
    image = resize(image, image_size)
    pad = max(1, image_size // 8)
    image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], _fold(seed, 0))
    return _flip(image, _fold(seed, 1), flip)


# ---------------------------------------------------------------------------------------------
# Keras augmentation layers, driven by explicit stateless seeds
# ---------------------------------------------------------------------------------------------


class _SeedStream(keras.random.SeedGenerator):
    """A SeedGenerator stand-in that derives each draw from a given seed tensor.

    Keras random layers draw from a SeedGenerator, whose state is a tf.Variable that every draw
    increments. In a parallel ``Dataset.map`` the increments race, so the stream would differ run
    to run, and the variable is not part of an iterator checkpoint. Instead each layer call gets
    a fresh stream whose k-th draw is ``fold_in(seed, k)``: draws are still distinct from each
    other, but depend only on the seed. ``SeedGenerator.__init__`` is skipped on purpose: it
    would create the very variable this avoids.
    """

    def __init__(self, seed: tf.Tensor):  # pylint: disable=super-init-not-called
        self._base = tf.cast(seed, tf.int64)
        self._draws = 0

    def next(self, ordered: bool = True) -> tf.Tensor:
        del ordered
        self._draws += 1
        return _fold(self._base, self._draws)


class _SeedSlot:
    """Holds the current call's stream. A plain object, so Keras does not track it as state."""

    stream: _SeedStream | None = None


class _SeededLayerMixin:
    """Makes a Keras random preprocessing layer take its randomness from a per-call seed.

    Keras layers fetch their generator through ``_get_seed_generator``; RandAugment passes the
    same generator on to its sub-layers, so overriding it here covers them too.
    """

    def __init__(self, **kwargs):
        # Keras derives the default name from the class name; a leading "_" is not a valid
        # TF name scope.
        kwargs.setdefault("name", type(self).__name__.lstrip("_").lower())
        super().__init__(**kwargs)
        self._seed_slot = _SeedSlot()

    def _get_seed_generator(self, backend=None):
        del backend
        if self._seed_slot.stream is None:
            raise RuntimeError(f"{type(self).__name__} must be called through seeded_call().")
        return self._seed_slot.stream

    @contextlib.contextmanager
    def seeded(self, seed: tf.Tensor):
        """Within this block the layer's random draws derive from ``seed`` alone."""
        # The slot is only read while this block traces or runs (single-threaded: tf.data traces
        # map functions once, in the calling thread).
        self._seed_slot.stream = _SeedStream(seed)
        try:
            yield
        finally:
            self._seed_slot.stream = None

    def seeded_call(self, data, seed: tf.Tensor):
        with self.seeded(seed):
            return self(data, training=True)


class _SeededRandAugment(_SeededLayerMixin, keras.layers.RandAugment):
    pass


class _SeededMixUp(_SeededLayerMixin, keras.layers.MixUp):
    pass


class _SeededCutMix(_SeededLayerMixin, keras.layers.CutMix):
    pass


def make_randaugment(num_ops: int, magnitude: float) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Returns ``fn(image, seed)`` applying ``keras.layers.RandAugment`` to one image.

    Applied per image, not per batch, because Keras draws the op choice once per call: per batch,
    every image in it would get the same ops. The result equals the layer's own call with the
    same seed, but only the chosen ops run: the layer computes all 11 candidate ops and selects
    with ``where``. Measured on 2 CPU cores, the whole 224 px Inception train map costs 3.8 ms per
    image without RandAugment, 7.6 ms with it this way, and 57 ms through the layer's call.

    Args:
        num_ops: ops applied in sequence to each image.
        magnitude: strength on the 0-10 scale; Keras samples each op's strength uniformly in
            ``[0, magnitude / 10]``.

    Returns:
        A function of a ``[H, W, 3]`` image in [0, 255] and an int ``[2]`` seed, returning float32
        ``[H, W, 3]`` in [0, 255]; same seed, same output. Its ``layer`` attribute is the Keras
        layer (call it with ``layer.seeded_call(image, seed)`` for the reference result).
    """
    if num_ops < 1 or not 0 < magnitude <= 10:
        raise ValueError(f"need num_ops >= 1 and 0 < magnitude <= 10, got {num_ops}, {magnitude}")
    layer = _SeededRandAugment(value_range=(0, 255), num_ops=num_ops, factor=magnitude / 10.0)

    def randaugment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        images = tf.cast(image, tf.float32)[None]
        with layer.seeded(seed):
            transformation = layer.get_random_transformation(images, training=True)
        for i in range(num_ops):
            # Same branches, in the same order, as RandAugment.transform_images' where-chain.
            branches = [
                functools.partial(
                    getattr(layer, name).transform_images,
                    images,
                    transformation["transforms"][name],
                )
                for name in layer._AUGMENT_LAYERS
            ]
            images = tf.switch_case(transformation["layer_idxes"][i], branches)
        return tf.clip_by_value(images[0], 0.0, 255.0)

    randaugment.layer = layer
    return randaugment


def make_mixup_cutmix(
    mixup_alpha: float, cutmix_alpha: float
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]:
    """Returns ``fn(images, one_hot_labels, seed)`` applying Keras MixUp and/or CutMix to a batch.

    Each image is mixed with another image of the same batch (a random permutation); labels are
    mixed with the same weights, so one-hot labels stay on the simplex. MixUp's weight is
    Beta(mixup_alpha, mixup_alpha) per image; CutMix uses Beta(cutmix_alpha, cutmix_alpha) for
    the box and mixes labels by the box's area. With both on, one of the two is applied to the
    whole batch, each with probability 0.5 (timm's ``switch_prob``).

    Args:
        mixup_alpha: MixUp concentration, 0 = off.
        cutmix_alpha: CutMix concentration in [0, 1], 0 = off.

    Returns:
        A function of float32 images ``[B, H, W, 3]``, float32 labels ``[B, C]`` and an int
        ``[2]`` seed, returning mixed ``(images, labels)`` of the same shapes.
    """
    if mixup_alpha < 0 or not 0 <= cutmix_alpha <= 1 or mixup_alpha == cutmix_alpha == 0:
        raise ValueError(
            f"need mixup_alpha >= 0, 0 <= cutmix_alpha <= 1, one of them > 0; "
            f"got {mixup_alpha}, {cutmix_alpha}"
        )
    mixup = _SeededMixUp(alpha=mixup_alpha) if mixup_alpha > 0 else None
    # A (a, a) factor makes Keras draw its Beta concentration as exactly a (plus 1e-6).
    cutmix = _SeededCutMix(factor=(cutmix_alpha, cutmix_alpha)) if cutmix_alpha > 0 else None

    def apply(layer, images, labels, seed):
        out = layer.seeded_call({"images": images, "labels": labels}, seed)
        return out["images"], tf.cast(out["labels"], tf.float32)

    def mix(images: tf.Tensor, labels: tf.Tensor, seed: tf.Tensor):
        images = tf.cast(images, tf.float32)
        labels = tf.cast(labels, tf.float32)
        if cutmix is None:
            return apply(mixup, images, labels, _fold(seed, 1))
        if mixup is None:
            return apply(cutmix, images, labels, _fold(seed, 2))
        use_cutmix = tf.random.stateless_uniform([], _fold(seed, 0)) < 0.5
        return tf.cond(
            use_cutmix,
            lambda: apply(cutmix, images, labels, _fold(seed, 2)),
            lambda: apply(mixup, images, labels, _fold(seed, 1)),
        )

    return mix


# ---------------------------------------------------------------------------------------------
# Pipelines
# ---------------------------------------------------------------------------------------------


def _train_positions(
    num_examples: int, seed: tf.Tensor, num_pipelines: int, pipeline_id: int, start: int = 0
):
    """Endless ``(position, index)`` stream: a fresh stateless permutation every epoch.

    Position p of the global stream (all hosts together) is example
    ``index_shuffle(p % n, seed_of_epoch(p // n))``; this host takes every ``num_pipelines``-th
    position from global position ``start`` on, so hosts are disjoint within an epoch and the
    stream at any step is computed directly (no state to save or replay).
    """
    shuffle_seed = _fold(seed, _SHUFFLE_TAG)
    n = tf.constant(num_examples, tf.int64)

    def to_index(position):
        epoch_seed = _fold(shuffle_seed, position // n)
        return position, tf.random.experimental.index_shuffle(position % n, epoch_seed, n - 1)

    positions = tf.data.Dataset.counter(
        start=start + pipeline_id, step=num_pipelines, dtype=tf.int64
    )
    return positions.map(to_index, num_parallel_calls=AUTOTUNE)


def _eval_positions(num_examples: int, num_pipelines: int, pipeline_id: int):
    """``(position, index)`` in order; host i takes indices i, i + k, ... (k = pipelines).

    Shard sizes differ by at most one example.
    """
    indices = tf.data.Dataset.range(pipeline_id, num_examples, num_pipelines)
    return indices.map(lambda i: (i, i))


def _tfds_examples(
    plan: _Plan,
    c: ml_collections.ConfigDict,
    *,
    train: bool,
    seed: int,
    num_pipelines: int,
    pipeline_id: int,
    input_context: tf.distribute.InputContext | None,
    skip: int = 0,
):
    """``(position, image_bytes, label)`` from TFDS, images still encoded (cheap to shuffle).

    Train: epoch e of this pipeline is its part of the split in a fixed order, shuffled in
    blocks by stateless permutations keyed on ``(seed, e)``; ``skip`` examples of this
    pipeline's stream are passed over by starting at epoch ``skip // L`` and dropping
    ``skip % L`` examples of it (L: this pipeline's examples per epoch). The stream is thus a
    function of (seed, skip) alone.
    """
    split = plan.info.train_split if train else plan.info.eval_split
    read_config = tfds.ReadConfig(
        try_autocache=False,  # `cache` is the one switch for caching.
        skip_prefetch=True,  # prefetching happens once, at the end of the pipeline.
    )
    if num_pipelines > 1:
        num_files = plan.builder.info.splits[split].num_shards
        if train and num_files >= num_pipelines:
            # Each host reads whole files, never touching the others' (TPU reference practice).
            read_config.input_context = input_context
        else:
            # Too few files to share out (e.g. CIFAR), or eval, where hosts should get shards
            # of equal size (+-1 example) to run the same number of eval steps: split by
            # example instead.
            split = tfds.even_splits(split, n=num_pipelines)[pipeline_id]
    ds = plan.builder.as_dataset(
        split=split,
        shuffle_files=False,  # a fixed file order; the seeded buffer below shuffles per epoch.
        read_config=read_config,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    ds = ds.map(lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32)))
    if c.cache:
        ds = ds.cache()
    if not train:
        return ds.enumerate().map(lambda pos, ex: (pos * num_pipelines + pipeline_id, *ex))
    epoch_length = int(ds.cardinality())
    if epoch_length < 0:  # unknown (file-sharded reads): count once, encoded records only.
        epoch_length = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    if epoch_length < 1:
        raise ValueError(f"TFDS split {split!r} holds no examples for pipeline {pipeline_id}.")
    first_epoch, offset = divmod(skip, epoch_length)
    base_seed = _fold(_root_seed(seed), _SHUFFLE_TAG)

    def epoch(e):
        # Epoch e is a function of (seed, e) alone (tf.data's shuffle seeds also mix in TF's
        # global seed, and fail in graph mode when it is 0): rotate the fixed order by a random
        # offset, then permute each block of shuffle_buffer records with a stateless
        # permutation. Like a shuffle buffer, it mixes records within a window of that size;
        # the rotation moves the block boundaries every epoch.
        e_seed = _fold(base_seed, e)
        window = min(c.shuffle_buffer, epoch_length)
        rotate = tf.random.stateless_uniform(
            [], seed=e_seed, minval=0, maxval=window, dtype=tf.int64, alg="philox"
        )
        blocks = ds.skip(rotate).concatenate(ds.take(rotate)).batch(c.shuffle_buffer)

        def permute(j, block):
            images, labels = block
            n = tf.cast(tf.shape(labels)[0], tf.int64)
            order = tf.random.experimental.index_shuffle(tf.range(n), _fold(e_seed, j), n - 1)
            return tf.gather(images, order), tf.gather(labels, order)

        shuffled = blocks.enumerate().map(permute).unbatch()
        return shuffled.enumerate().map(lambda i, ex: (e, i, ex[0], ex[1]))

    epochs = tf.data.Dataset.counter(start=first_epoch, dtype=tf.int64).flat_map(epoch)
    # Positions unique across hosts and epochs: the augmentation seed of an example never
    # repeats (2^32 examples per pipeline epoch at most).
    return epochs.skip(offset).map(
        lambda e, i, image, label: (
            (e * 2**32 + i) * num_pipelines + pipeline_id,
            image,
            label,
        ),
        num_parallel_calls=AUTOTUNE,
    )


def _preprocess_decoded(image, plan: _Plan, train: bool, seed, image_size: int):
    if plan.preprocess == "inception":
        if train:
            return inception_crop(image, seed, image_size, flip=plan.flip)
        return center_crop(image, image_size)
    if plan.preprocess == "cifar" and train:
        return cifar_crop(image, seed, image_size, flip=plan.flip)
    return resize(image, image_size)  # "none", and "cifar" at eval.


def _preprocess_encoded(image_bytes, plan: _Plan, train: bool, seed, image_size: int):
    """Encoded bytes to float32 ``[S, S, 3]`` in [0, 255]; the one decode path of tfsd.

    ``build_dataset`` uses it for TFDS and folder examples, `make_eval_image_fn` (and through it
    the exported ``serving_bytes`` / ``serving_examples`` signatures) for eval.
    """
    # Inception crops decode only the crop window; other modes need the whole image anyway.
    if plan.preprocess == "inception":
        if train:
            return decode_and_inception_crop(image_bytes, seed, image_size, flip=plan.flip)
        return decode_and_center_crop(image_bytes, image_size)
    return _preprocess_decoded(decode_image(image_bytes), plan, train, seed, image_size)


def make_eval_image_fn(
    config: Mapping[str, Any], image_size: int, *, data_dir: str | None = None
) -> Callable[[tf.Tensor], tf.Tensor]:
    """The eval preprocessing of ``config``'s dataset, for one encoded image.

    Returns a function mapping a scalar string tensor of JPEG/PNG/BMP/GIF bytes to float32
    ``[image_size, image_size, 3]`` in [0, 255]: exactly what ``build_dataset(split="eval")``
    does to a stored image (same function, ``_preprocess_encoded``). Used by the exported
    ``serving_bytes`` and ``serving_examples`` signatures. Undecodable bytes raise
    ``InvalidArgumentError`` when the function runs.

    Raises:
        ValueError, DatasetNotPreparedError, FileNotFoundError: as ``get_dataset_info``.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    plan = _resolve(_merged_config(config), data_dir)

    def fn(image_bytes: tf.Tensor) -> tf.Tensor:
        image = _preprocess_encoded(image_bytes, plan, False, None, image_size)
        return tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, 3])

    return fn


def build_dataset(
    config: Mapping[str, Any],
    *,
    split: str,
    global_batch_size: int,
    image_size: int,
    seed: int = 0,
    data_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Builds the train or eval input pipeline.

    Images are float32 ``[B, image_size, image_size, 3]`` with raw pixel values in [0, 255]: no
    mean/std normalisation here, the models normalise inside themselves. Labels are int32
    ``[B]``, or float32 one-hot ``[B, C]`` for train when MixUp or CutMix is on.

    Train: endless (repeated), shuffled, augmented, ``drop_remainder=True`` (static shapes for
    TPU/XLA), prefetched; the stream is a pure function of ``(seed, start_step)``: the pipeline
    built with ``start_step=k`` yields exactly what the one built with ``start_step=0`` yields
    after ``k`` global steps, on every host and replica, so training resumes without iterator
    state. Eval: one pass in a fixed order, no randomness; the last partial batch is kept unless
    ``config.eval_drop_remainder``.

    Args:
        config: the data config (``default_config()`` with overrides).
        split: "train" or "eval" (which dataset split that means: ``get_dataset_info``).
        global_batch_size: batch size summed over all replicas.
        image_size: output side in pixels.
        seed: seed of shuffling and augmentation (not of the synthetic images' content).
        data_dir: TFDS data directory (local or ``gs://``); None = TFDS's default.
        input_context: from ``strategy.distribute_datasets_from_function``. Its pipeline reads a
            disjoint part of the data (shard ``input_pipeline_id`` of ``num_input_pipelines``)
            and batches at the per-replica batch size.
        start_step: train only: the global step to start at (each step consumes
            ``global_batch_size`` examples of the global stream).

    Returns:
        A ``tf.data.Dataset`` of ``(images, labels)``.

    Raises:
        ValueError: invalid config or arguments.
        DatasetNotPreparedError: a TFDS dataset is not in ``data_dir``.
        FileNotFoundError: a folder dataset's path does not exist.
    """
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if global_batch_size < 1:
        raise ValueError(f"global_batch_size must be >= 1, got {global_batch_size}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if start_step < 0 or (start_step and split != "train"):
        raise ValueError(f"start_step must be >= 0 and only given for train, got {start_step}")
    c = _merged_config(config)
    plan = _resolve(c, data_dir)
    train = split == "train"
    if input_context is not None:
        # Raises if the global batch does not divide evenly over the replicas.
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
    else:
        batch_size, num_pipelines, pipeline_id = global_batch_size, 1, 0
    if global_batch_size % num_pipelines:
        raise ValueError(
            f"global_batch_size {global_batch_size} must divide over {num_pipelines} pipelines"
        )
    # Each global step takes global_batch_size consecutive positions of the global stream,
    # global_batch_size / num_pipelines of them (several per-replica batches) from each pipeline.
    start = start_step * global_batch_size
    first_batch = start // num_pipelines // batch_size
    num_classes = plan.info.num_classes
    root = _root_seed(seed)
    augment_seed = _fold(root, _AUGMENT_TAG)

    randaugment = None
    if train and c.randaugment_num_ops > 0 and c.randaugment_magnitude > 0:
        randaugment = make_randaugment(c.randaugment_num_ops, c.randaugment_magnitude)
    mixer = None
    if train and (c.mixup_alpha > 0 or c.cutmix_alpha > 0):
        mixer = make_mixup_cutmix(c.mixup_alpha, c.cutmix_alpha)

    # 1. Cheap elements, shuffled and sharded: indices, file paths or encoded bytes.
    num_examples = plan.info.num_train_examples if train else plan.info.num_eval_examples
    if plan.kind == "tfds":
        ds = _tfds_examples(
            plan,
            c,
            train=train,
            seed=seed,
            num_pipelines=num_pipelines,
            pipeline_id=pipeline_id,
            input_context=input_context,
            skip=start // num_pipelines,
        )
    elif train:
        ds = _train_positions(num_examples, root, num_pipelines, pipeline_id, start)
    else:
        ds = _eval_positions(num_examples, num_pipelines, pipeline_id)
    if plan.kind == "folder":
        paths, labels = (tf.constant(v) for v in plan.files[split])
        ds = ds.map(lambda pos, i: (pos, tf.gather(paths, i), tf.gather(labels, i)))

    # 2. The expensive per-example work: read/decode or generate, then augment.
    def example(position, *payload):
        example_seed = _fold(augment_seed, position)
        if plan.kind == "synthetic":
            image, label = synthetic_example(
                split, payload[0], image_size=image_size, num_classes=num_classes
            )
            image = _preprocess_decoded(image, plan, train, example_seed, image_size)
        else:
            data, label = payload
            image_bytes = tf.io.read_file(data) if plan.kind == "folder" else data
            image = _preprocess_encoded(image_bytes, plan, train, example_seed, image_size)
        if randaugment is not None:
            image = randaugment(image, _fold(example_seed, 2))
        image = tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, 3])
        label = tf.cast(label, tf.int32)
        if mixer is not None:
            return image, tf.one_hot(label, num_classes, dtype=tf.float32)
        return image, label

    ds = ds.map(example, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=train or c.eval_drop_remainder)

    # 3. Batch-level mixing, seeded by the batch's position (unique across hosts).
    if mixer is not None:
        mix_seed = _fold(root, _MIX_TAG)
        ds = ds.enumerate(start=first_batch).map(
            lambda b, xy: mixer(*xy, _fold(mix_seed, b * num_pipelines + pipeline_id)),
            num_parallel_calls=AUTOTUNE,
        )

    options = tf.data.Options()
    options.deterministic = True  # parallel maps still emit in order: reproducible streams.
    return ds.prefetch(AUTOTUNE).with_options(options)
