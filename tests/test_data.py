"""Tests for tfsd.data: every op eagerly and inside Dataset.map, every source, determinism."""

import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tfsd import data
from tfsd.data import config as data_config
from tfsd.data import positions, sources


def _config(**overrides):
    c = data.default_config()
    for key, value in overrides.items():
        c[key] = value
    return c


def _seed(*values):
    return tf.constant(values, tf.int64)


def _eager_and_mapped(fn, *args):
    """``fn(*args)`` run eagerly and inside ``Dataset.map``; asserts both agree, returns numpy."""
    return _eager_and_mapped_over_seeds(lambda *a: fn(*a[:-1]), args, [_seed(0, 0)])[0]


def _eager_and_mapped_over_seeds(fn, args, seeds):
    """``[fn(*args, seed) for seed in seeds]`` eagerly and in one ``Dataset.map``; both agree."""
    eager = [tf.nest.map_structure(lambda t: t.numpy(), fn(*args, seed)) for seed in seeds]
    mapped = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(lambda s: fn(*args, s))
    for want, got in zip(eager, mapped, strict=True):
        tf.nest.map_structure(
            lambda a, b: np.testing.assert_allclose(a, b.numpy(), atol=1e-4), want, got
        )
    return eager


def _batches(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(n)]


def _identify(images, reference):
    """Index of each image in ``reference`` (graph and eager float maths differ by ~1e-5)."""
    distances = np.abs(np.asarray(images)[:, None] - np.asarray(reference)[None]).max((2, 3, 4))
    assert (distances.min(1) < 1e-2).all(), "an image is not in the reference set"
    return [int(i) for i in distances.argmin(1)]


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_default_config_has_every_field_with_its_default():
    c = data.default_config()
    assert c.to_dict() == {
        "name": "synthetic",
        "num_classes": None,
        "train_split": None,
        "eval_split": None,
        "preprocess": "auto",
        "randaugment_num_ops": 2,
        "randaugment_magnitude": 0.0,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "shuffle_buffer": 10_000,
        "synthetic_train_size": 50_000,
        "synthetic_eval_size": 10_000,
        "folder_eval_fraction": 0.1,
        "cache": False,
        "eval_drop_remainder": False,
        "source_dir": "",
        "accept_checksums": False,
    }
    # None-valued fields are typed placeholders, so command-line overrides parse as int/str.
    c.num_classes = 100
    with pytest.raises(TypeError):
        c.num_classes = "many"


def test_synthetic_dataset_info():
    assert data.get_dataset_info(_config(num_classes=7, synthetic_eval_size=30)) == (
        data.DatasetInfo(
            num_classes=7,
            num_train_examples=50_000,
            num_eval_examples=30,
            train_split="train",
            eval_split="eval",
            native_image_size=None,
        )
    )
    assert data.get_dataset_info({"name": "synthetic"}).num_classes == 10  # plain dicts work too


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"name": "mnist"}, "Unknown dataset name"),
        ({"preprocess": "autoaugment"}, "preprocess must be one of"),
        ({"num_classes": 1}, "num_classes must be >= 2"),
        ({"randaugment_magnitude": 15.0}, "0-10 scale"),
        ({"randaugment_num_ops": -1}, "randaugment_num_ops"),
        ({"mixup_alpha": -0.1}, "mixup_alpha"),
        ({"cutmix_alpha": 1.5}, "cutmix_alpha"),
        ({"shuffle_buffer": 0}, "shuffle_buffer"),
        ({"synthetic_train_size": 0}, "synthetic_train_size"),
        ({"folder_eval_fraction": 1.0}, "folder_eval_fraction"),
        ({"train_split": "train[:10%]"}, "fixed 'train'/'eval' splits"),
        ({"cache": True}, "cache=True is not supported"),
        ({"name": "folder:"}, "needs a path"),
    ],
)
def test_bad_config_raises_a_clear_error(overrides, match):
    with pytest.raises(ValueError, match=match):
        data.get_dataset_info(_config(**overrides))


def test_unknown_config_field_is_an_error():
    with pytest.raises(ValueError, match=r"Unknown data config field\(s\) \['mixup'\]"):
        data.get_dataset_info({"name": "synthetic", "mixup": 0.2})


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"split": "validation"}, ValueError, "split must be 'train' or 'eval'"),
        ({"global_batch_size": 0}, ValueError, "global_batch_size"),
        ({"image_size": 4}, ValueError, "image_size"),
        # 8 does not divide over 3 replicas.
        ({"input_context": tf.distribute.InputContext(1, 0, 3)}, ValueError, "divisible"),
    ],
)
def test_bad_build_arguments_raise(kwargs, error, match):
    args = {"split": "train", "global_batch_size": 8, "image_size": 32, **kwargs}
    with pytest.raises(error, match=match):
        data.build_dataset(_config(), **args)


# ---------------------------------------------------------------------------------------------
# Synthetic source
# ---------------------------------------------------------------------------------------------


def test_synthetic_example_is_a_deterministic_function_of_split_and_index():
    def example(index):
        return data.synthetic_example("train", index, image_size=32, num_classes=10)

    image, label = _eager_and_mapped(example, tf.constant(5, tf.int64))
    again, label_again = example(5)
    np.testing.assert_array_equal(image, again.numpy())
    assert label == label_again and label.dtype == np.int32 and 0 <= label < 10
    assert image.shape == (32, 32, 3) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 255 and image.std() > 10  # not a flat image
    other, _ = example(6)
    eval_image, _ = data.synthetic_example("eval", 5, image_size=32, num_classes=10)
    assert np.abs(image - other.numpy()).mean() > 10
    assert np.abs(image - eval_image.numpy()).mean() > 10  # train and eval are different images


def test_synthetic_pattern_does_not_depend_on_resolution():
    def at(size, index=3):
        return data.synthetic_example("eval", index, image_size=size, num_classes=10)[0]

    # 64 px average-pooled to 32 px shows the same image as 32 px, up to pixel noise.
    pooled = tf.nn.avg_pool2d(at(64)[None], 2, 2, "VALID")[0].numpy()
    assert np.abs(pooled - at(32).numpy()).mean() < 12
    assert np.abs(pooled - at(32, index=4).numpy()).mean() > 30


def _synthetic_arrays(split, n, num_classes=10):
    ds = tf.data.Dataset.range(n).map(
        lambda i: data.synthetic_example(split, i, image_size=32, num_classes=num_classes)
    )
    images, labels = next(iter(ds.batch(n)))
    return images.numpy(), labels.numpy()


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes=10):
    centroids = np.stack([train_x[train_y == c].mean(0) for c in range(num_classes)])
    distances = ((test_x[:, None] - centroids[None]) ** 2).sum(-1)
    return (distances.argmin(1) == test_y).mean()


def test_synthetic_classes_differ_in_structure_not_in_mean_colour():
    train_x, train_y = _synthetic_arrays("train", 3000)
    eval_x, eval_y = _synthetic_arrays("eval", 600)
    assert np.bincount(train_y, minlength=10).min() > 200  # every class present, roughly uniform

    def spectrum(x):  # phase-invariant structure: log |FFT| of the grey image, mean removed
        grey = x.mean(-1)
        grey -= grey.mean((1, 2), keepdims=True)
        return np.log1p(np.abs(np.fft.fft2(grey))).reshape(len(x), -1)

    def mean_colour(x):
        return x.mean((1, 2))

    # Measured: 0.90 from structure, 0.14 from mean colour (chance is 0.10).
    assert _nearest_centroid_accuracy(spectrum(train_x), train_y, spectrum(eval_x), eval_y) > 0.75
    colour_acc = _nearest_centroid_accuracy(
        mean_colour(train_x), train_y, mean_colour(eval_x), eval_y
    )
    assert colour_acc < 0.25


def test_synthetic_is_learnable_by_a_tiny_cnn():
    # Measured: 0.998 eval accuracy after 200 steps of batch 64 (~10 s on 2 CPU cores).
    keras.utils.set_random_seed(0)
    config = _config(synthetic_train_size=20_000, synthetic_eval_size=1000)
    train = data.build_dataset(config, split="train", global_batch_size=64, image_size=32)
    evaluation = data.build_dataset(config, split="eval", global_batch_size=250, image_size=32)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 127.5, offset=-1),  # the pipeline yields [0, 255]
            keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(train, steps_per_epoch=200, epochs=1, verbose=0)
    _, accuracy = model.evaluate(evaluation, verbose=0)
    assert accuracy >= 0.9


# ---------------------------------------------------------------------------------------------
# Pipelines: shapes, determinism, epochs, sharding, checkpoints
# ---------------------------------------------------------------------------------------------


def test_train_batches_have_static_shapes_and_raw_pixel_range():
    ds = data.build_dataset(_config(), split="train", global_batch_size=8, image_size=40)
    assert ds.element_spec == (
        tf.TensorSpec([8, 40, 40, 3], tf.float32),
        tf.TensorSpec([8], tf.int32),
    )
    images, labels = _batches(ds, 1)[0]
    assert images.min() >= 0 and images.max() <= 255 and images.max() > 200  # not normalised
    assert labels.min() >= 0 and labels.max() < 10


def test_train_stream_is_reproducible_and_depends_on_seed():
    config = _config(preprocess="cifar", mixup_alpha=0.2)

    def stream(seed):
        ds = data.build_dataset(
            config, split="train", global_batch_size=4, image_size=32, seed=seed
        )
        return _batches(ds, 3)

    first, again, other = stream(1), stream(1), stream(2)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not np.array_equal(first[0][0], other[0][0])


def test_train_epoch_is_a_permutation_and_epochs_differ():
    n = 24
    config = _config(synthetic_train_size=n)
    ds = data.build_dataset(config, split="train", global_batch_size=8, image_size=16, seed=0)
    batches = _batches(ds, 6)  # two epochs
    reference = [x for x, _ in _synthetic_stream("train", n, 16)]
    epochs = [
        _identify(np.concatenate([b[0] for b in batches[i : i + 3]]), reference) for i in (0, 3)
    ]
    for epoch in epochs:
        assert sorted(epoch) == list(range(n))  # each example exactly once
    assert epochs[0] != epochs[1]  # a fresh permutation every epoch


def _synthetic_stream(split, n, image_size):
    for i in range(n):
        image, label = data.synthetic_example(split, i, image_size=image_size, num_classes=10)
        yield image.numpy(), int(label)


def test_eval_is_ordered_complete_and_optionally_drops_remainder():
    config = _config(synthetic_eval_size=10)
    ds = data.build_dataset(config, split="eval", global_batch_size=4, image_size=16)
    batches = _batches(ds, 10)
    assert [len(y) for _, y in batches] == [4, 4, 2]
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    expected = list(_synthetic_stream("eval", 10, 16))
    np.testing.assert_allclose(images, np.stack([x for x, _ in expected]), atol=1e-3)
    np.testing.assert_array_equal(labels, [y for _, y in expected])
    assert labels.dtype == np.int32
    # No randomness at eval: a second pass is identical; augmentation settings do not apply.
    augmented = _config(synthetic_eval_size=10, mixup_alpha=0.4, randaugment_magnitude=9.0)
    again = data.build_dataset(augmented, split="eval", global_batch_size=4, image_size=16)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in _batches(again, 10)]), images)
    config.eval_drop_remainder = True
    dropped = data.build_dataset(config, split="eval", global_batch_size=4, image_size=16)
    assert dropped.element_spec[0].shape == [4, 16, 16, 3]
    assert [len(y) for _, y in _batches(dropped, 10)] == [4, 4]


def test_input_context_shards_are_disjoint_and_use_the_per_replica_batch():
    n = 16
    config = _config(synthetic_train_size=n, synthetic_eval_size=10)
    train_reference = [x for x, _ in _synthetic_stream("train", n, 16)]
    eval_reference = [x for x, _ in _synthetic_stream("eval", 10, 16)]
    train_shards, eval_shards = [], []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline_id, num_replicas_in_sync=2
        )
        kwargs = {"global_batch_size": 8, "image_size": 16, "input_context": context}
        train = data.build_dataset(config, split="train", **kwargs)
        assert train.element_spec[0].shape == [4, 16, 16, 3]  # per-replica batch: 8 / 2
        # One epoch is n examples over both hosts: n / 2 / 4 = 2 batches per host.
        train_images = np.concatenate([x for x, _ in _batches(train, 2)])
        train_shards.append(set(_identify(train_images, train_reference)))
        evaluation = data.build_dataset(config, split="eval", **kwargs)
        eval_images = np.concatenate([x for x, _ in _batches(evaluation, 10)])
        eval_shards.append(_identify(eval_images, eval_reference))
    assert len(train_shards[0]) == len(train_shards[1]) == n // 2
    assert not train_shards[0] & train_shards[1]
    assert train_shards[0] | train_shards[1] == set(range(n))
    assert eval_shards == [list(range(0, 10, 2)), list(range(1, 10, 2))]


def test_per_replica_batch_with_one_pipeline_and_four_replicas():
    context = tf.distribute.InputContext(1, 0, 4)
    ds = data.build_dataset(
        _config(), split="train", global_batch_size=32, image_size=16, input_context=context
    )
    assert ds.element_spec[0].shape == [8, 16, 16, 3]


def test_train_stream_resumes_at_any_step_without_iterator_state():
    """The stream built at start_step=k equals the stream from step 0 after k steps, augmentation
    and batch mixing included; so a resumed run needs no iterator checkpoint."""
    config = _config(
        synthetic_train_size=50,
        preprocess="inception",
        randaugment_magnitude=9.0,
        mixup_alpha=0.2,
        cutmix_alpha=1.0,
    )

    def build(start_step=0):
        return data.build_dataset(
            config, split="train", global_batch_size=4, image_size=24, seed=7,
            start_step=start_step,
        )  # fmt: skip

    full = _batches(build(), 9)
    for k in (1, 5):
        for got, want in zip(_batches(build(k), 9 - k), full[k:]):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="start_step"):
        data.build_dataset(config, split="eval", global_batch_size=4, image_size=24, start_step=1)


def test_sharded_stream_resumes_at_the_same_global_step():
    """2 hosts (2 pipelines, 1 replica each) and 1 host with 2 replicas (1 pipeline, 2 batches
    per step): each pipeline's stream from step k continues its own stream from step 0."""
    config = _config(synthetic_train_size=40, mixup_alpha=0.2)
    for pipelines, pipeline in ((2, 0), (2, 1), (1, 0)):
        context = tf.distribute.InputContext(pipelines, pipeline, 2)
        per_step = 8 // pipelines // 4  # per-replica batches of 4 this pipeline yields a step

        def build(start_step, context=context):
            return data.build_dataset(
                config, split="train", global_batch_size=8, image_size=16, seed=1,
                input_context=context, start_step=start_step,
            )  # fmt: skip

        full = _batches(build(0), 4 * per_step)
        resumed = _batches(build(2), 2 * per_step)
        for got, want in zip(resumed, full[2 * per_step :], strict=True):
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])


def test_mixup_and_cutmix_make_one_hot_soft_labels():
    config = _config(num_classes=5, mixup_alpha=0.4, cutmix_alpha=1.0)
    ds = data.build_dataset(config, split="train", global_batch_size=16, image_size=16)
    assert ds.element_spec[1] == tf.TensorSpec([16, 5], tf.float32)
    labels = np.concatenate([y for _, y in _batches(ds, 4)])
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-5)
    assert labels.min() >= 0 and (labels.max(1) < 0.999).any()  # some labels really are mixed


# ---------------------------------------------------------------------------------------------
# Image ops, each eagerly and inside Dataset.map
# ---------------------------------------------------------------------------------------------


def _ramp_image(height, width):
    """R = 2 * row, G = 2 * column, B = 128: a crop can be located from its pixel values."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([2 * rows, 2 * cols, np.full_like(rows, 128)], -1).astype(np.float32)


def _locate_crop(output, image_size):
    """(y, x, h, w, flipped) of the window a resized crop of ``_ramp_image`` came from."""
    mid = slice(image_size // 4, 3 * image_size // 4)  # bicubic clamps at the borders
    rows = output[mid, image_size // 2, 0] / 2
    cols = output[image_size // 2, mid, 1] / 2
    i = np.arange(image_size)[mid]
    row_slope, row_icpt = np.polyfit(i, rows, 1)
    col_slope, col_icpt = np.polyfit(i, cols, 1)
    flipped = col_slope < 0
    h, w = row_slope * image_size, abs(col_slope) * image_size
    # Pixel i of the output samples input coordinate y + (i + 0.5) * h / S - 0.5.
    y = row_icpt - 0.5 * row_slope + 0.5
    x = (
        (col_icpt + col_slope * (image_size - 0.5) + 0.5)
        if flipped
        else (col_icpt - 0.5 * col_slope + 0.5)
    )
    return y, x, h, w, flipped


def test_inception_crop_is_a_random_sub_window_with_the_reference_ranges():
    height, width, size = 90, 120, 32
    image = tf.constant(_ramp_image(height, width))
    windows = []
    outputs = _eager_and_mapped_over_seeds(
        lambda im, s: data.inception_crop(im, s, size), [image], [_seed(k, 1) for k in range(24)]
    )
    for out in outputs:
        assert out.shape == (size, size, 3) and out.dtype == np.float32
        assert out.min() >= 0 and out.max() <= 255
        y, x, h, w, flipped = _locate_crop(out, size)
        assert -1 <= y and y + h <= height + 1 and -1 <= x and x + w <= width + 1
        assert 0.08 * height * width * 0.9 <= h * w <= height * width * 1.01
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
        windows.append((round(y), round(x), round(h), round(w), flipped))
    assert len(set(windows)) > 20  # different seeds, different crops
    assert 4 <= sum(w[-1] for w in windows) <= 20  # flips happen, about half the time
    same = data.inception_crop(image, _seed(3, 1), size)
    np.testing.assert_array_equal(same.numpy(), data.inception_crop(image, _seed(3, 1), size))


def test_inception_crop_flip_is_a_mirror_and_can_be_disabled():
    image = tf.constant(_ramp_image(64, 64))
    mirrored = 0
    for k in range(10):
        seed = _seed(k, 2)
        flipped = data.inception_crop(image, seed, 24).numpy()
        plain = data.inception_crop(image, seed, 24, flip=False).numpy()
        if np.array_equal(flipped, plain[:, ::-1]) and not np.array_equal(flipped, plain):
            mirrored += 1
        else:
            np.testing.assert_array_equal(flipped, plain)
        assert _locate_crop(plain, 24)[-1] == False  # noqa: E712 (numpy bool)
    assert 0 < mirrored < 10


def test_inception_crop_falls_back_to_center_crop_when_sampling_fails():
    # A 1x200 strip admits no crop with aspect ratio in [3/4, 4/3] and area >= 8%.
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, 200, 3)), tf.float32)
    out = data.inception_crop(image, _seed(0, 0), 8, flip=False)
    np.testing.assert_allclose(out.numpy(), data.center_crop(image, 8).numpy(), atol=1e-4)


def test_center_crop_keeps_the_central_224_of_256():
    image = np.random.default_rng(0).uniform(0, 255, (256, 320, 3)).astype(np.float32)
    out = _eager_and_mapped(lambda im: data.center_crop(im, 224), tf.constant(image))
    # side = 224 / (224 + 32) * 256 = 224; offsets ((256 - 224 + 1) // 2, (320 - 224 + 1) // 2).
    np.testing.assert_array_equal(out, image[16:240, 48:272])
    smaller = data.center_crop(tf.constant(image), 112).numpy()
    assert smaller.shape == (112, 112, 3)
    # int(112 / 144 * 256) = 199 px central square at ((256 - 199 + 1) // 2, (320 - 199 + 1) // 2).
    expected = data.resize(image[29:228, 61:260], 112).numpy()
    np.testing.assert_allclose(smaller, expected, atol=1e-3)


def test_cifar_crop_is_a_shifted_window_of_the_zero_padded_image():
    image = np.random.default_rng(0).uniform(1, 255, (32, 32, 3)).astype(np.float32)
    padded = np.pad(image, [(4, 4), (4, 4), (0, 0)])
    windows = {
        padded[dy : dy + 32, dx : dx + 32].tobytes(): (dy, dx) for dy in range(9) for dx in range(9)
    }
    found = []
    outputs = _eager_and_mapped_over_seeds(
        lambda im, s: data.cifar_crop(im, s, 32),
        [tf.constant(image)],
        [_seed(k, 0) for k in range(20)],
    )
    for out in outputs:
        if out.tobytes() in windows:
            found.append((windows[out.tobytes()], False))
        else:
            found.append((windows[out[:, ::-1].tobytes()], True))  # KeyError if neither
    assert len({f[0] for f in found}) > 10 and 0 < sum(f[1] for f in found) < 20
    # The input has no zeros: shifted crops show the black (zero) padding, the centred one not.
    for out, ((dy, dx), _) in zip(outputs, found, strict=True):
        assert (out.min() == 0) == ((dy, dx) != (4, 4))
    assert any(offset != (4, 4) for offset, _ in found)
    no_flip = [
        data.cifar_crop(tf.constant(image), _seed(k, 0), 32, flip=False).numpy() for k in range(20)
    ]
    assert all(x.tobytes() in windows for x in no_flip)


def test_resize_is_bicubic_and_identity_at_the_same_size():
    image = np.random.default_rng(1).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(_eager_and_mapped(lambda im: data.resize(im, 32), image), image)
    up = _eager_and_mapped(lambda im: data.resize(im, 48), image)
    assert up.shape == (48, 48, 3) and up.min() >= 0 and up.max() <= 255  # clipped overshoot
    expected = tf.image.resize(image, [48, 48], method="bicubic").numpy().clip(0, 255)
    np.testing.assert_allclose(up, expected, atol=1e-4)


def test_decode_and_crop_matches_decode_then_crop():
    rng = np.random.default_rng(0)
    smooth = tf.image.resize(rng.uniform(0, 255, (12, 16, 3)), [96, 128]).numpy()
    image = tf.constant(smooth.clip(0, 255).astype(np.uint8))
    png, jpeg = tf.io.encode_png(image), tf.io.encode_jpeg(image, quality=95)
    seed = _seed(5, 5)
    # PNG: exactly the same crop; JPEG: decode_and_crop_jpeg differs only by chroma rounding.
    from_png = _eager_and_mapped(lambda b, s: data.decode_and_inception_crop(b, s, 40), png, seed)
    np.testing.assert_allclose(from_png, data.inception_crop(image, seed, 40).numpy(), atol=1e-4)
    from_jpeg = _eager_and_mapped(lambda b, s: data.decode_and_inception_crop(b, s, 40), jpeg, seed)
    decoded = tf.io.decode_jpeg(jpeg)
    assert np.abs(from_jpeg - data.inception_crop(decoded, seed, 40).numpy()).mean() < 1.0
    center = _eager_and_mapped(lambda b: data.decode_and_center_crop(b, 40), jpeg)
    assert np.abs(center - data.center_crop(decoded, 40).numpy()).mean() < 1.0


def test_randaugment_is_seeded_and_matches_the_keras_layer():
    augment = data.make_randaugment(num_ops=2, magnitude=9)
    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (40, 48, 3)), tf.float32)
    seeds = [_seed(k, 3) for k in range(6)]
    outputs = _eager_and_mapped_over_seeds(augment, [image], seeds)
    for out, seed in zip(outputs, seeds, strict=True):
        assert out.shape == (40, 48, 3) and out.min() >= 0 and out.max() <= 255
        # Only the chosen ops run, yet the result is the Keras layer's own (where-chain) result.
        reference = augment.layer.seeded_call(image, seed).numpy().clip(0, 255)
        np.testing.assert_allclose(out, reference, atol=1e-3)
    np.testing.assert_array_equal(outputs[0], augment(image, seeds[0]).numpy())
    assert len({o.tobytes() for o in outputs}) == 6
    assert np.mean([np.abs(o - image.numpy()).mean() for o in outputs]) > 5  # it augments


def _one_hot_batch(batch=8):
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 255, (batch, 12, 12, 3)), tf.float32)
    return images, tf.one_hot(tf.range(batch), batch)  # every label distinct: pairs recoverable


def test_mixup_outputs_convex_combinations_of_images_and_labels():
    mix = data.make_mixup_cutmix(mixup_alpha=0.4, cutmix_alpha=0.0)
    images, labels = _one_hot_batch()
    out_x, out_y = _eager_and_mapped(mix, images, labels, _seed(1, 1))
    np.testing.assert_allclose(out_y.sum(1), 1.0, atol=1e-5)
    x = images.numpy()
    mixed = 0
    for i in range(8):
        weight = out_y[i, i]
        partner = np.argmax(np.where(np.arange(8) == i, -1, out_y[i])) if weight < 1 else i
        expected = weight * x[i] + (1 - weight) * x[partner]
        np.testing.assert_allclose(out_x[i], expected, atol=1e-2)
        mixed += weight < 0.99
    assert mixed >= 4
    again = mix(images, labels, _seed(1, 1))
    np.testing.assert_array_equal(again[0].numpy(), out_x)


def test_cutmix_pastes_a_box_and_mixes_labels_by_its_area():
    mix = data.make_mixup_cutmix(mixup_alpha=0.0, cutmix_alpha=1.0)
    images, labels = _one_hot_batch()
    out_x, out_y = _eager_and_mapped(mix, images, labels, _seed(2, 2))
    np.testing.assert_allclose(out_y.sum(1), 1.0, atol=1e-5)
    x = images.numpy()
    pasted = 0
    for i in range(8):
        own = np.all(out_x[i] == x[i], -1)
        if own.all():
            continue
        partner = int(np.argmax(np.where(np.arange(8) == i, -1, out_y[i])))
        from_partner = np.all(out_x[i] == x[partner], -1)
        assert np.all(own | from_partner)  # every pixel comes from one of the two images
        rows, cols = np.nonzero(from_partner & ~own)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert np.all(from_partner[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1])
        assert abs(out_y[i, partner] - box / 144) < 0.2  # label weight ~ the box's area share
        pasted += 1
    assert pasted >= 3


def test_mixup_and_cutmix_together_use_one_per_batch():
    mix = data.make_mixup_cutmix(mixup_alpha=0.4, cutmix_alpha=1.0)
    images, labels = _one_hot_batch()
    kinds = set()
    for k in range(10):
        out_x, out_y = (t.numpy() for t in mix(images, labels, _seed(k, 9)))
        np.testing.assert_allclose(out_y.sum(1), 1.0, atol=1e-5)
        # CutMix keeps original pixel values; MixUp blends them.
        pixels_kept = np.isin(out_x, images.numpy()).mean()
        kinds.add("cutmix" if pixels_kept == 1.0 else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_augmentation_factories_reject_bad_arguments():
    with pytest.raises(ValueError):
        data.make_randaugment(num_ops=0, magnitude=9)
    with pytest.raises(ValueError):
        data.make_mixup_cutmix(mixup_alpha=0.0, cutmix_alpha=0.0)


# ---------------------------------------------------------------------------------------------
# Folder source
# ---------------------------------------------------------------------------------------------

_CLASS_COLOURS = {"cat": 30, "dog": 130, "emu": 230}


def _write_image_folder(root, per_class=12, size=(40, 56)):
    """PNG and JPEG images; each class a flat grey level, so labels can be read off pixels."""
    for name, level in _CLASS_COLOURS.items():
        (root / name / "nested").mkdir(parents=True)
        for i in range(per_class):
            image = tf.fill([*size, 3], tf.constant(level, tf.uint8))
            if i % 2:
                encoded, path = tf.io.encode_jpeg(image, quality=100), root / name / f"{i}.JPG"
            else:
                encoded, path = tf.io.encode_png(image), root / name / "nested" / f"{i}.png"
            tf.io.write_file(str(path), encoded)
        (root / name / "notes.txt").write_text("not an image")
    return root


def test_folder_source_splits_by_stable_hash_and_labels_by_sorted_folder(tmp_path):
    root = _write_image_folder(tmp_path / "images")
    config = _config(name=f"folder:{root}", folder_eval_fraction=0.25)
    info = data.get_dataset_info(config)
    assert info.num_classes == 3 and info.native_image_size is None
    assert info.num_train_examples + info.num_eval_examples == 36
    assert 3 <= info.num_eval_examples <= 18

    evaluation = data.build_dataset(config, split="eval", global_batch_size=4, image_size=16)
    images = np.concatenate([x for x, _ in _batches(evaluation, 100)])
    labels = np.concatenate([y for _, y in _batches(evaluation, 100)])
    assert len(labels) == info.num_eval_examples
    levels = np.array(list(_CLASS_COLOURS.values()))  # sorted names: cat=0, dog=1, emu=2
    np.testing.assert_allclose(images.mean((1, 2, 3)), levels[labels], atol=2)

    train = data.build_dataset(config, split="train", global_batch_size=8, image_size=16)
    images, labels = _batches(train, 1)[0]
    assert images.shape == (8, 16, 16, 3) and labels.dtype == np.int32
    np.testing.assert_allclose(images.mean((1, 2, 3)), levels[labels], atol=2)


def test_folder_split_of_existing_files_survives_adding_files(tmp_path):
    root = _write_image_folder(tmp_path / "images")
    name = f"folder:{root}"
    before = data._list_folder(str(root), 0.25)[1]
    data._list_folder.cache_clear()
    tf.io.write_file(
        str(root / "dog" / "extra.png"), tf.io.encode_png(tf.zeros([4, 4, 3], tf.uint8))
    )
    after = data._list_folder(str(root), 0.25)[1]
    for split in ("train", "eval"):
        assert set(before[split][0]) <= set(after[split][0])
    assert data.get_dataset_info(_config(name=name, folder_eval_fraction=0.25)).num_classes == 3


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.get_dataset_info(_config(name=f"folder:{tmp_path / 'missing'}"))
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class sub-folders"):
        data.get_dataset_info(_config(name=f"folder:{tmp_path / 'flat'}"))
    root = _write_image_folder(tmp_path / "images", per_class=4)
    (root / "empty_class").mkdir()
    (root / "empty_class" / "readme.md").write_text("no images here")
    with pytest.raises(ValueError, match="empty_class' has no images"):
        data.get_dataset_info(_config(name=f"folder:{root}"))
    ok = _write_image_folder(tmp_path / "ok", per_class=8)
    with pytest.raises(ValueError, match="num_classes=5 but .* has 3 class folders"):
        data.get_dataset_info(_config(name=f"folder:{ok}", num_classes=5))
    with pytest.raises(ValueError, match="eval split is empty"):
        data.get_dataset_info(_config(name=f"folder:{ok}", folder_eval_fraction=1e-9))


# ---------------------------------------------------------------------------------------------
# TFDS source
# ---------------------------------------------------------------------------------------------


def _tfds_template(builder, split):
    return tfds.core.ShardedFileTemplate(
        data_dir=builder.data_path,
        dataset_name=builder.name,
        split=split,
        filetype_suffix="tfrecord",
    )


def _write_tfds_metadata(name, data_dir, shard_lengths):
    """Makes ``name`` look prepared in ``data_dir``: real dataset_info.json with these splits."""
    builder = tfds.builder(name, data_dir=str(data_dir))
    builder.data_path.mkdir(parents=True, exist_ok=True)
    splits = [
        tfds.core.SplitInfo(
            name=split,
            shard_lengths=lengths,
            num_bytes=0,
            filename_template=_tfds_template(builder, split),
        )
        for split, lengths in shard_lengths.items()
    ]
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_path)
    return builder


def _write_tiny_cifar10(data_dir, shard_lengths):
    """A real (not mocked) prepared cifar10 in TFRecords; example k is a flat image of level k."""
    builder = _write_tfds_metadata("cifar10", data_dir, shard_lengths)
    k = 0
    for split, lengths in shard_lengths.items():
        template = _tfds_template(builder, split)
        for shard, length in enumerate(lengths):
            path = template.sharded_filepath(shard_index=shard, num_shards=len(lengths))
            with tf.io.TFRecordWriter(str(path)) as writer:
                for _ in range(length):
                    example = {
                        "id": str(k),
                        "image": np.full((32, 32, 3), k, np.uint8),
                        "label": k % 10,
                    }
                    writer.write(builder.info.features.serialize_example(example))
                    k += 1


def test_tfds_cifar10_under_mock_data_uses_cifar_preprocessing(tmp_path):
    _write_tfds_metadata("cifar10", tmp_path, {"train": [50_000], "test": [10_000]})
    config = _config(name="cifar10", num_classes=10)
    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        info = data.get_dataset_info(config, data_dir=str(tmp_path))
        # class_names come from the (mocked) ClassLabel feature: checked for their count only.
        assert info[:6] == (10, 50_000, 10_000, "train", "test", 32)
        assert len(info.class_names) == 10
        train = data.build_dataset(
            config, split="train", global_batch_size=8, image_size=32, data_dir=str(tmp_path)
        )
        images, labels = _batches(train, 1)[0]
        evaluation = data.build_dataset(
            config, split="eval", global_batch_size=8, image_size=32, data_dir=str(tmp_path)
        )
        eval_batches = _batches(evaluation, 10)
    assert images.shape == (8, 32, 32, 3) and 0 <= images.min() and images.max() <= 255
    assert labels.dtype == np.int32 and 0 <= labels.min() and labels.max() < 10
    # Zero padding + random crop: some train images have black borders, mock images rarely do.
    assert (images.max(axis=(2, 3)) == 0).any() or (images.max(axis=(1, 3)) == 0).any()
    assert [len(y) for _, y in eval_batches] == [8, 8, 4]  # the mock yields 20 examples


def test_tfds_imagenet_under_mock_data_uses_inception_preprocessing(tmp_path):
    _write_tfds_metadata("imagenet2012", tmp_path, {"train": [1000], "validation": [50]})
    config = _config(name="imagenet2012", randaugment_magnitude=9.0, mixup_alpha=0.2)
    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        info = data.get_dataset_info(config, data_dir=str(tmp_path))
        assert info[:6] == (1000, 1000, 50, "train", "validation", None)
        assert len(info.class_names) == 1000
        context = tf.distribute.InputContext(2, 1, 2)
        train = data.build_dataset(
            config,
            split="train",
            global_batch_size=8,
            image_size=48,
            data_dir=str(tmp_path),
            input_context=context,
        )
        images, labels = _batches(train, 1)[0]
        evaluation = data.build_dataset(
            config, split="eval", global_batch_size=5, image_size=48, data_dir=str(tmp_path)
        )
        eval_images, eval_labels = _batches(evaluation, 1)[0]
    assert images.shape == (4, 48, 48, 3) and labels.shape == (4, 1000)
    np.testing.assert_allclose(labels.sum(1), 1.0, atol=1e-5)
    assert eval_images.shape == (5, 48, 48, 3) and eval_labels.dtype == np.int32
    assert 0 <= images.min() and images.max() <= 255 and eval_images.max() > 100


def test_tfds_real_files_shard_by_file_for_train_and_evenly_for_eval(tmp_path):
    _write_tiny_cifar10(tmp_path, {"train": [20, 20], "test": [11]})
    config = _config(name="cifar10", preprocess="none")
    kwargs = {"global_batch_size": 4, "image_size": 32, "data_dir": str(tmp_path)}
    train_levels, eval_levels = [], []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(2, pipeline_id, 2)
        train = data.build_dataset(config, split="train", input_context=context, **kwargs)
        train_levels.append({int(x[0, 0, 0]) for b in _batches(train, 20) for x in b[0]})
        evaluation = data.build_dataset(config, split="eval", input_context=context, **kwargs)
        eval_levels.append([int(x[0, 0, 0]) for b in _batches(evaluation, 10) for x in b[0]])
    # Two train files, two hosts: one file each. Eval (1 file) is split by example.
    assert sorted([sorted(s) for s in train_levels]) == [list(range(20)), list(range(20, 40))]
    assert sorted(eval_levels[0] + eval_levels[1]) == list(range(40, 51))
    assert not set(eval_levels[0]) & set(eval_levels[1])


@pytest.mark.parametrize("cache", [False, True])
def test_tfds_real_files_train_stream_is_seeded_and_resumes_at_any_step(tmp_path, cache):
    data_dir = tmp_path / "tfds"
    _write_tiny_cifar10(data_dir, {"train": [12, 12], "test": [4]})
    config = _config(name="cifar10", preprocess="cifar", cache=cache)

    def build(seed):
        return data.build_dataset(
            config,
            split="train",
            global_batch_size=6,
            image_size=32,
            seed=seed,
            data_dir=str(data_dir),
        )

    def levels(batches):  # the centre pixel survives the pad-and-crop: it names the example
        return [int(x[16, 16, 0]) for b in batches for x in b[0]]

    first = levels(_batches(build(3), 8))
    assert first == levels(_batches(build(3), 8)) and first != levels(_batches(build(4), 8))
    assert sorted(first[:24]) == sorted(first[24:]) == list(range(24))  # epochs are permutations
    assert first[:24] != first[24:]  # reshuffled every epoch

    # Resuming at step k (mid-epoch 1 here: 24 examples per epoch, 6 per step) yields what the
    # uninterrupted stream yields from its k-th batch on, with no iterator state.
    for k in (3, 5):
        resumed = data.build_dataset(
            config, split="train", global_batch_size=6, image_size=32, seed=3,
            data_dir=str(data_dir), start_step=k,
        )  # fmt: skip
        assert levels(_batches(resumed, 8 - k)) == first[6 * k :]


def test_tfds_unprepared_dataset_says_how_to_prepare_it(tmp_path):
    with pytest.raises(data.DatasetNotPreparedError, match=r"tfds build cifar10 --data_dir=") as e:
        data.get_dataset_info(_config(name="cifar10"), data_dir=str(tmp_path))
    assert isinstance(e.value, FileNotFoundError) and "never downloads" in str(e.value)
    with pytest.raises(data.DatasetNotPreparedError) as e:
        data.build_dataset(
            _config(name="imagenet2012"),
            split="train",
            global_batch_size=8,
            image_size=224,
            data_dir=str(tmp_path),
        )
    message = str(e.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert f"{tmp_path}/downloads/manual/" in message
    assert f"tfds build imagenet2012 --data_dir={tmp_path}" in message


def test_tfds_config_must_match_the_dataset(tmp_path):
    _write_tfds_metadata("cifar10", tmp_path, {"train": [100], "test": [10]})
    with pytest.raises(ValueError, match="num_classes=100 but cifar10 has 10 classes"):
        data.get_dataset_info(_config(name="cifar10", num_classes=100), data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="Split 'validation' is not valid"):
        data.get_dataset_info(
            _config(name="cifar10", eval_split="validation"), data_dir=str(tmp_path)
        )
    info = data.get_dataset_info(
        _config(name="cifar10", train_split="train[:90%]", eval_split="train[90%:]"),
        data_dir=str(tmp_path),
    )
    assert (info.num_train_examples, info.num_eval_examples) == (90, 10)


@pytest.mark.parametrize(
    "name, shard_lengths, expected",
    [
        # The paper's SVHN protocol trains on train+extra.
        (
            "svhn_cropped",
            {"train": [73_257], "extra": [531_131], "test": [26_032]},
            (604_388, 26_032),
        ),
        # tf_flowers has one split; the last 10% is held out.
        ("tf_flowers", {"train": [3_670]}, (3_303, 367)),
        ("imagenette", {"train": [9_469], "validation": [3_925]}, (9_469, 3_925)),
        ("cifar100", {"train": [50_000], "test": [10_000]}, (50_000, 10_000)),
    ],
)
def test_tfds_default_splits(tmp_path, name, shard_lengths, expected):
    _write_tfds_metadata(name, tmp_path, shard_lengths)
    info = data.get_dataset_info(_config(name=name), data_dir=str(tmp_path))
    assert (info.num_train_examples, info.num_eval_examples) == expected


def test_a_new_source_is_one_module_and_one_registry_line(monkeypatch):
    """The source protocol of tfsd.data.sources, end to end, with a source defined here.

    ``build_dataset`` must drive a source through ``resolve`` / ``elements`` / ``load`` alone:
    example k of this source is a flat image of level 10·k with label k % 3. (Fails on the
    first split of tfsd/data.py, whose build_dataset branched on the three known kinds.)
    """

    def resolve(c, data_dir):
        del data_dir
        info = data.DatasetInfo(3, 6, 5, "train", "eval", None)
        return data_config.Plan("levels", info, "none", False, None, None)

    def load(plan, split, image_size, index):
        del plan, split
        return tf.fill([image_size, image_size, 3], 10.0 * tf.cast(index, tf.float32)), index % 3

    levels = types.ModuleType("levels")
    levels.resolve, levels.elements, levels.load, levels.ENCODED = (
        resolve, positions.index_elements, load, False,
    )  # fmt: skip
    registry = (*sources.SOURCES, sources.Source("levels", lambda n: n == "levels", levels))
    monkeypatch.setattr(sources, "SOURCES", registry)

    config = {"name": "levels"}
    assert data.get_dataset_info(config).num_train_examples == 6
    eval_batches = _batches(data.build_dataset(config, split="eval", global_batch_size=2,
                                               image_size=8), 5)  # fmt: skip
    assert [len(y) for _, y in eval_batches] == [2, 2, 1]
    images = np.concatenate([x for x, _ in eval_batches])
    np.testing.assert_array_equal(images[:, 0, 0, 0], [0, 10, 20, 30, 40])
    assert (images == images[:, :1, :1, :1]).all()  # flat, resized to 8 px unchanged
    np.testing.assert_array_equal(np.concatenate([y for _, y in eval_batches]), [0, 1, 2, 0, 1])
    # Train: one epoch (6 positions) visits every example once, in a seeded order.
    (train_images, train_labels), = _batches(
        data.build_dataset(config, split="train", global_batch_size=6, image_size=8, seed=4), 1
    )  # fmt: skip
    order = train_images[:, 0, 0, 0] / 10
    assert sorted(order) == list(range(6)) and list(order) != list(range(6))
    np.testing.assert_array_equal(train_labels, order.astype(int) % 3)
