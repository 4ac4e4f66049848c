"""The TFDS source: prepared TensorFlow Datasets (ImageNet, CIFAR, SVHN...); never downloaded.

A dataset not yet prepared is prepared offline from ``data.source_dir`` when that is set
(`tfsd.data.prepare`: TFDS's own builder, an explicit checksum policy, ``data.accept_checksums``).

Examples stay encoded until after the shuffle (cheap to shuffle and cache). SVHN gets no
augmentation and trains on train+extra, the protocol of the stochastic-depth paper (Huang et al.,
"Deep Networks with Stochastic Depth", ECCV 2016, arXiv:1603.09382). Each epoch is shuffled in
blocks of ``shuffle_buffer`` records by stateless permutations keyed on ``(seed, epoch)``; a
resumed run starts at its epoch and skips the examples already seen in it (read, not decoded).
"""

import os
from typing import NamedTuple

import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from tfsd.data import prepare
from tfsd.data.config import DatasetInfo, DatasetNotPreparedError, Plan, auto
from tfsd.data.seeds import SHUFFLE_TAG, fold, root_seed

ENCODED = True  # `load` yields the stored image bytes.


class Spec(NamedTuple):
    """How tfsd uses one TFDS dataset."""

    train_split: str  # TFDS split expression used for training by default.
    eval_split: str  # ... and for evaluation.
    preprocess: str  # what preprocess="auto" means for this dataset.
    flip: bool  # whether a horizontal flip preserves the label.


# Columns: train split, eval split, auto preprocessing, flip is label-preserving.
SPECS = {
    "imagenet2012": Spec("train", "validation", "inception", True),
    "cifar10": Spec("train", "test", "cifar", True),
    "cifar100": Spec("train", "test", "cifar", True),
    # Paper protocol: train+extra (604k digits), no augmentation, digits are not mirror-symmetric.
    "svhn_cropped": Spec("train+extra", "test", "none", False),
    # Imagenette ships train/validation only; "validation" is its held-out split.
    "imagenette": Spec("train", "validation", "inception", True),
    # Fashion-MNIST: 28x28 greyscale, decoded to 3 equal channels; a mirrored garment keeps its
    # class, so the CIFAR recipe (pad, crop, flip) applies as is (configs/fashion_mnist_*.py).
    "fashion_mnist": Spec("train", "test", "cifar", True),
    # tf_flowers ships a single 3,670-image "train" split: hold out the last 10%.
    "tf_flowers": Spec("train[:90%]", "train[90%:]", "inception", True),
}


def _not_prepared_message(name: str, data_dir: str) -> str:
    base = name.split("/")[0]
    if base == "imagenet2012":
        return (
            f"TFDS dataset {name!r} is not prepared in {data_dir!r}. ImageNet needs a manual "
            "download: get ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (~150 GB) from "
            f"https://image-net.org/, put them in {os.path.join(data_dir, 'downloads', 'manual')}/ "
            f"and run:\n  tfds build imagenet2012 --data_dir={data_dir}"
        )
    if base in prepare.DEBIAN_SOURCES:
        package, folder = prepare.DEBIAN_SOURCES[base]
        return (
            f"TFDS dataset {name!r} is not prepared in {data_dir!r}. Offline: "
            f"`apt-get install {package}`, then train with --config.data.source_dir={folder} "
            "--config.data.accept_checksums=true (the package's files differ from TFDS's "
            "registered checksums; see docs/data.md), or prepare once with\n"
            f"  tfsd-prepare --dataset={name} --source_dir={folder} --accept_checksums "
            f"--data_dir={data_dir}"
        )
    return (
        f"TFDS dataset {name!r} is not prepared in {data_dir!r}. With its source files in a "
        f"folder: tfsd-prepare --dataset={name} --source_dir=FOLDER --data_dir={data_dir} "
        "(or --config.data.source_dir=FOLDER). On a machine with internet "
        f"access run:\n  tfds build {name} --data_dir={data_dir}\nthen copy the resulting "
        f"{base}/ folder into {data_dir} (or point data_dir at a gs:// bucket holding it). "
        "tfsd never downloads data itself."
    )


def resolve(c: ml_collections.ConfigDict, data_dir: str | None) -> Plan:
    """The `Plan` of a validated TFDS config; reads the dataset's metadata from ``data_dir``."""
    spec = SPECS[c.name.split("/")[0]]
    builder = tfds.builder(c.name, data_dir=data_dir)
    if not builder.is_prepared() and c.source_dir:
        prepare.prepare(
            c.name, c.source_dir, data_dir=data_dir, accept_checksums=c.accept_checksums
        )
        builder = tfds.builder(c.name, data_dir=data_dir)  # reads the prepared dataset's info
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
    return Plan("tfds", info, auto(c.preprocess, spec.preprocess), spec.flip, builder, None)


def examples(
    plan: Plan,
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
    base_seed = fold(root_seed(seed), SHUFFLE_TAG)

    def epoch(e):
        # Epoch e is a function of (seed, e) alone (tf.data's shuffle seeds also mix in TF's
        # global seed, and fail in graph mode when it is 0): rotate the fixed order by a random
        # offset, then permute each block of shuffle_buffer records with a stateless
        # permutation. Like a shuffle buffer, it mixes records within a window of that size;
        # the rotation moves the block boundaries every epoch.
        e_seed = fold(base_seed, e)
        window = min(c.shuffle_buffer, epoch_length)
        rotate = tf.random.stateless_uniform(
            [], seed=e_seed, minval=0, maxval=window, dtype=tf.int64, alg="philox"
        )
        blocks = ds.skip(rotate).concatenate(ds.take(rotate)).batch(c.shuffle_buffer)

        def permute(j, block):
            images, labels = block
            n = tf.cast(tf.shape(labels)[0], tf.int64)
            order = tf.random.experimental.index_shuffle(tf.range(n), fold(e_seed, j), n - 1)
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
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def elements(
    plan: Plan,
    c: ml_collections.ConfigDict,
    *,
    split: str,
    train: bool,
    seed: int,
    start: int,
    num_pipelines: int,
    pipeline_id: int,
    input_context: tf.distribute.InputContext | None,
) -> tf.data.Dataset:
    """``(position, image_bytes, label)`` of this pipeline from global position ``start`` on."""
    del split  # plan.info holds the TFDS split expressions.
    return examples(
        plan,
        c,
        train=train,
        seed=seed,
        num_pipelines=num_pipelines,
        pipeline_id=pipeline_id,
        input_context=input_context,
        skip=start // num_pipelines,
    )


def load(
    plan: Plan, split: str, image_size: int, image_bytes: tf.Tensor, label: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(image_bytes, label)``: TFDS examples arrive already read."""
    del plan, split, image_size
    return image_bytes, label
