"""``build_dataset``: the train and eval pipelines, assembled from source, transforms, augmentation.

Every pipeline yields ``(images, labels)`` with images float32 ``[B, S, S, 3]`` holding raw pixel
values in [0, 255] (the models normalise inside themselves) and labels int32 ``[B]``, or float32
one-hot ``[B, C]`` when MixUp/CutMix is on (train split only).

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

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from tfsd.data import sources
from tfsd.data.augment import make_mixup_cutmix, make_randaugment
from tfsd.data.config import merged_config
from tfsd.data.seeds import AUGMENT_TAG, MIX_TAG, fold, root_seed
from tfsd.data.transforms import preprocess_decoded, preprocess_encoded

AUTOTUNE = tf.data.AUTOTUNE


def make_eval_image_fn(
    config: Mapping[str, Any], image_size: int, *, data_dir: str | None = None
) -> Callable[[tf.Tensor], tf.Tensor]:
    """The eval preprocessing of ``config``'s dataset, for one encoded image.

    Returns a function mapping a scalar string tensor of JPEG/PNG/BMP/GIF bytes to float32
    ``[image_size, image_size, 3]`` in [0, 255]: exactly what ``build_dataset(split="eval")``
    does to a stored image (same function, ``preprocess_encoded``). Used by the exported
    ``serving_bytes`` and ``serving_examples`` signatures. Undecodable bytes raise
    ``InvalidArgumentError`` when the function runs.

    Raises:
        ValueError, DatasetNotPreparedError, FileNotFoundError: as ``get_dataset_info``.
    """
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    plan = sources.resolve(merged_config(config), data_dir)

    def fn(image_bytes: tf.Tensor) -> tf.Tensor:
        image = preprocess_encoded(image_bytes, plan, False, None, image_size)
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
    c = merged_config(config)
    plan = sources.resolve(c, data_dir)
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
    root = root_seed(seed)
    augment_seed = fold(root, AUGMENT_TAG)

    randaugment = None
    if train and c.randaugment_num_ops > 0 and c.randaugment_magnitude > 0:
        randaugment = make_randaugment(c.randaugment_num_ops, c.randaugment_magnitude)
    mixer = None
    if train and (c.mixup_alpha > 0 or c.cutmix_alpha > 0):
        mixer = make_mixup_cutmix(c.mixup_alpha, c.cutmix_alpha)

    # 1. Cheap elements, shuffled and sharded: indices, file paths or encoded bytes.
    source = sources.module_of(plan)
    ds = source.elements(
        plan,
        c,
        split=split,
        train=train,
        seed=seed,
        start=start,
        num_pipelines=num_pipelines,
        pipeline_id=pipeline_id,
        input_context=input_context,
    )
    preprocess = preprocess_encoded if source.ENCODED else preprocess_decoded

    # 2. The expensive per-example work: read/decode or generate, then augment.
    # Plain TF ops with Python conditions on the config: tf.data need not autograph it (nor what
    # it calls), which saves every process the rewrite (tfsd.training.step.make_train_loop).
    @tf.autograph.experimental.do_not_convert
    def example(position, *payload):
        example_seed = fold(augment_seed, position)
        image, label = source.load(plan, split, image_size, *payload)
        image = preprocess(image, plan, train, example_seed, image_size)
        if randaugment is not None:
            image = randaugment(image, fold(example_seed, 2))
        image = tf.ensure_shape(tf.cast(image, tf.float32), [image_size, image_size, 3])
        label = tf.cast(label, tf.int32)
        if mixer is not None:
            return image, tf.one_hot(label, num_classes, dtype=tf.float32)
        return image, label

    ds = ds.map(example, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=train or c.eval_drop_remainder)

    # 3. Batch-level mixing, seeded by the batch's position (unique across hosts).
    if mixer is not None:
        mix_seed = fold(root, MIX_TAG)
        ds = ds.enumerate(start=first_batch).map(
            lambda b, xy: mixer(*xy, fold(mix_seed, b * num_pipelines + pipeline_id)),
            num_parallel_calls=AUTOTUNE,
        )

    options = tf.data.Options()
    options.deterministic = True  # parallel maps still emit in order: reproducible streams.
    return ds.prefetch(AUTOTUNE).with_options(options)
