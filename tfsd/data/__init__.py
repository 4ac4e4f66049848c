"""Input pipelines for training image classifiers: synthetic, TFDS and image-folder sources.

Every pipeline yields ``(images, labels)`` with images float32 ``[B, S, S, 3]`` holding **raw pixel
values in [0, 255]**: the tfsd models normalise inside themselves, so nothing here subtracts a mean
or divides by a standard deviation. Labels are int32 ``[B]``, or float32 one-hot ``[B, C]`` when
MixUp/CutMix is on (train split only).

One concept per module, each importing only the ones above it in this list:

* `tfsd.data.seeds`: stateless seed folding (every random draw is keyed on a position).
* `tfsd.data.config`: the data config (``default_config``), its validation, `DatasetInfo`.
* `tfsd.data.positions`: the stateless index streams of the sources that shuffle indices.
* `tfsd.data.prepare`: prepares a TFDS dataset offline from a folder of its source files, with
  an explicit checksum policy (TFDS's own builder; ``tfsd-prepare`` is its command).
* `tfsd.data.synthetic`, `tfsd.data.folder`, `tfsd.data.tfds`: the three sources, each a module
  with ``resolve`` (config against data), ``elements`` (the shuffled, sharded cheap stream) and
  ``load`` (the per-example read).
* `tfsd.data.sources`: the source registry (name → source module; add a source there) and
  `get_dataset_info`.
* `tfsd.data.transforms`: decode / resize / crop ops (Inception, center, CIFAR crops) and the
  one decode path shared by training, eval and the exported signatures.
* `tfsd.data.augment`: RandAugment, MixUp and CutMix from Keras layers, statelessly seeded.
* `tfsd.data.pipeline`: `build_dataset` and `make_eval_image_fn`, which assemble the above.

Every public name is re-exported here, so callers write ``from tfsd import data as data_lib``
and ``data_lib.build_dataset(...)`` without knowing the layout.
"""

from tfsd.data.augment import make_mixup_cutmix, make_randaugment
from tfsd.data.config import DatasetInfo, DatasetNotPreparedError, default_config
from tfsd.data.folder import _list_folder  # noqa: F401  (tests clear its cache)
from tfsd.data.pipeline import AUTOTUNE, build_dataset, make_eval_image_fn
from tfsd.data.sources import get_dataset_info
from tfsd.data.synthetic import synthetic_example
from tfsd.data.transforms import (
    CROP_PADDING,
    center_crop,
    cifar_crop,
    decode_and_center_crop,
    decode_and_inception_crop,
    decode_image,
    inception_crop,
    resize,
)

__all__ = [
    "AUTOTUNE",
    "CROP_PADDING",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "build_dataset",
    "center_crop",
    "cifar_crop",
    "decode_and_center_crop",
    "decode_and_inception_crop",
    "decode_image",
    "default_config",
    "get_dataset_info",
    "inception_crop",
    "make_eval_image_fn",
    "make_mixup_cutmix",
    "make_randaugment",
    "resize",
    "synthetic_example",
]
