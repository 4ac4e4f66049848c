"""Image ops: decode, resize and crop to float32 ``[S, S, 3]`` in [0, 255]; pure TF, no state.

Every op runs eagerly and inside ``Dataset.map``, and takes an explicit stateless seed where it is
random. Preprocessing follows these references:

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
  32x32 crop, random horizontal flip.

`preprocess_encoded` is the one decode path of tfsd: the pipeline's TFDS and folder examples and
the exported ``serving_bytes`` / ``serving_examples`` signatures all go through it.
"""

from collections.abc import Callable

import tensorflow as tf

from tfsd.data.config import Plan
from tfsd.data.seeds import fold

# EfficientNet TPU reference: eval keeps the central image_size / (image_size + 32) of the image.
CROP_PADDING = 32


def resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes to ``[image_size, image_size, 3]`` float32 in [0, 255], aspect ratio not kept.

    Bicubic, as the EfficientNet reference; bicubic overshoots, hence the clip back to [0, 255].
    Bicubic resizing to the same size is an exact identity, so 32x32 CIFAR passes unchanged.
    A uint8 image is resized as it is (the kernel reads it as float, bit-identical to casting
    first) so that no float32 copy of a full-size image is made: 4x its bytes for a served photo.
    """
    if image.shape[0] == image_size and image.shape[1] == image_size:
        return tf.cast(image, tf.float32)
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
    window = _inception_crop_window(tf.shape(image), fold(seed, 0), image_size)
    return _flip(resize(_crop(image, window), image_size), fold(seed, 1), flip)


def decode_and_inception_crop(
    image_bytes: tf.Tensor, seed: tf.Tensor, image_size: int, *, flip: bool = True
) -> tf.Tensor:
    """``inception_crop`` of encoded image bytes; JPEGs only decode the crop window."""
    crop_seed = fold(seed, 0)
    image = _decode_and_crop(
        image_bytes, lambda shape: _inception_crop_window(shape, crop_seed, image_size)
    )
    return _flip(resize(image, image_size), fold(seed, 1), flip)


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
    image = tf.image.stateless_random_crop(image, [image_size, image_size, 3], fold(seed, 0))
    return _flip(image, fold(seed, 1), flip)


def preprocess_decoded(image, plan: Plan, train: bool, seed, image_size: int):
    """A decoded image to float32 ``[S, S, 3]`` in [0, 255] by ``plan``'s preprocessing."""
    if plan.preprocess == "inception":
        if train:
            return inception_crop(image, seed, image_size, flip=plan.flip)
        return center_crop(image, image_size)
    if plan.preprocess == "cifar" and train:
        return cifar_crop(image, seed, image_size, flip=plan.flip)
    return resize(image, image_size)  # "none", and "cifar" at eval.


def preprocess_encoded(image_bytes, plan: Plan, train: bool, seed, image_size: int):
    """Encoded bytes to float32 ``[S, S, 3]`` in [0, 255]; the one decode path of tfsd.

    ``build_dataset`` uses it for TFDS and folder examples, ``make_eval_image_fn`` (and through it
    the exported ``serving_bytes`` / ``serving_examples`` signatures) for eval.
    """
    # Inception crops decode only the crop window; other modes need the whole image anyway.
    if plan.preprocess == "inception":
        if train:
            return decode_and_inception_crop(image_bytes, seed, image_size, flip=plan.flip)
        return decode_and_center_crop(image_bytes, image_size)
    return preprocess_decoded(decode_image(image_bytes), plan, train, seed, image_size)
