"""The data config (``config.data``), its validation, and what a resolved dataset looks like.

The lowest layer of `tfsd.data`: no source, op or pipeline code, so every other module of the
package can import it. The config's ``name`` picks a source (`tfsd.data.sources`).
"""

from collections.abc import Mapping
from typing import Any, NamedTuple

import ml_collections
from ml_collections import config_dict

PREPROCESS_MODES = ("auto", "inception", "cifar", "none")


def default_config() -> ml_collections.ConfigDict:
    """Returns the data config with every field at its default.

    The training config nests this as ``config.data``; override fields from the command line,
    e.g. ``--config.data.name=cifar10 --config.data.mixup_alpha=0.2``.
    """
    c = ml_collections.ConfigDict()
    # "synthetic" (offline, generated on the fly), a TFDS name (imagenet2012, cifar10, cifar100,
    # svhn_cropped, imagenette, tf_flowers, fashion_mnist; a builder config may follow, e.g.
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
    # TFDS only: a folder of the dataset's source files (TFDS's file names) to prepare it from,
    # offline, when it is not prepared in data_dir (tfsd.data.prepare). "" = never prepare.
    c.source_dir = ""
    # ... and whether files whose size/sha256 differ from TFDS's registered ones are accepted
    # (their decoded content is then validated, their checksums recorded next to the data).
    c.accept_checksums = False
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


class Plan(NamedTuple):
    """A validated config resolved against its source (`tfsd.data.sources.resolve`)."""

    kind: str  # "synthetic" | "tfds" | "folder": the name of the source that resolved it.
    info: DatasetInfo
    preprocess: str  # "inception" | "cifar" | "none" (auto resolved)
    flip: bool
    builder: Any  # tfds.core.DatasetBuilder for TFDS sources, else None.
    files: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] | None  # folder: split -> files.


def merged_config(config: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Defaults overlaid with ``config``; unknown fields are an error (they are usually typos)."""
    merged = default_config()
    unknown = sorted(set(config.keys()) - set(merged.keys()))
    if unknown:
        raise ValueError(f"Unknown data config field(s) {unknown}; known: {sorted(merged.keys())}")
    for key in config.keys():
        merged[key] = config[key]
    return merged


def validate(c: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid source-independent field of a merged config."""
    if c.preprocess not in PREPROCESS_MODES:
        raise ValueError(f"preprocess must be one of {PREPROCESS_MODES}, got {c.preprocess!r}")
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


def check_index_source(c: ml_collections.ConfigDict, what: str) -> None:
    """Rejects settings that need a stored, split-named dataset (synthetic and folder have none)."""
    if c.train_split is not None or c.eval_split is not None:
        raise ValueError(
            f"{what} has fixed 'train'/'eval' splits; leave train_split and eval_split unset "
            f"(got {c.train_split!r}, {c.eval_split!r})."
        )
    if c.source_dir or c.accept_checksums:
        raise ValueError(
            f"{what} is not prepared from source files; leave source_dir and accept_checksums "
            f"unset (got {c.source_dir!r}, {c.accept_checksums!r})."
        )
    if c.cache:
        raise ValueError(
            f"cache=True is not supported for {what}: it shuffles indices and reads or "
            "generates each image after the shuffle, so there is nothing to cache. Set cache=False."
        )


def auto(preprocess: str, default: str) -> str:
    """``preprocess`` with "auto" replaced by the source's ``default``."""
    return default if preprocess == "auto" else preprocess
