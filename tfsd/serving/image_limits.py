"""Bounded, per-example decoding of encoded images inside the serving signatures.

Two promises of ``serving_bytes`` / ``serving_examples`` (``docs/serving.md``, "Limits and bad
images"):

* **Every request is bounded.** An image is refused, before it is decoded, when its encoded size
  exceeds ``max_bytes`` or its header's width × height exceeds ``max_pixels`` (the header is read
  with `tf.image.extract_jpeg_shape` for JPEG and from the fixed header fields of PNG (IHDR) and
  BMP (BITMAPINFOHEADER)). Other formats are refused: their decoded size is not known before
  decoding. GIF among them: TF's GIF decoder (``tensorflow/core/lib/gif/gif_io.cc``) reads every
  frame with giflib's ``DGifSlurp`` and sizes its canvas by the largest frame, which the logical
  screen size in the header does not bound, even with ``expand_animations=False``. At most
  `DECODE_PARALLELISM` images of a request are decoded at once, each to uint8 (the float cast
  comes after the crop/resize, in `tfsd.data.transforms`), so a request holds at most about
  ``DECODE_PARALLELISM × 2 × max_pixels × 3`` bytes of decoded pixels (image and crop).
* **A bad image fails only its own example**, also when TF Serving's batching merges requests
  and runs them as one batch (``tensorflow_serving/batching/batching_session.cc``,
  ``ProcessBatch``: the batch's one status goes to every request in it). Nothing here raises for
  a bad image: each example is decoded in a ``tf.data`` pipeline whose ``ignore_errors`` drops
  the ones whose decoding raised, and the result says, per example, ``valid`` and ``error``
  (why not). ``Dataset.get_single_element`` is TF's documented way to run a dataset inside a
  serving function (its docstring: "use the transformation while serving a model").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

# 25 megapixels: a 24 MP camera photo (6000 × 4000) or a 12 MP phone photo passes; uint8 RGB is
# 75 MB. 32 MiB of encoded bytes: a 24 MP JPEG is about 10 MB, a lossless PNG of it more.
DEFAULT_MAX_PIXELS = 25_000_000
DEFAULT_MAX_BYTES = 32 << 20

# Images of one request decoded at once (tf.data's num_parallel_calls): bounds a request's memory.
DECODE_PARALLELISM = 4

# Per-example status codes (the `error` output maps them to the messages below).
OK, TOO_MANY_BYTES, UNKNOWN_FORMAT, TOO_MANY_PIXELS, UNDECODABLE = range(5)


class ImageLimits(NamedTuple):
    """What one encoded image may be: encoded bytes and header width × height."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_bytes: int = DEFAULT_MAX_BYTES

    def check(self) -> ImageLimits:
        for name, value in self._asdict().items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        return self

    def messages(self) -> list[str]:
        """The ``error`` output's text for each status code."""
        return [
            "",
            f"the encoded image is over the limit of {self.max_bytes} bytes",
            "not a JPEG, PNG or BMP image",
            f"the image is over the limit of {self.max_pixels} pixels (width x height)",
            "the image cannot be decoded (corrupt or truncated data)",
        ]


def _le(b: tf.Tensor, start: int, n: int) -> tf.Tensor:
    """Little-endian unsigned integer of ``b[start:start + n]`` (uint8 → int64)."""
    v = tf.cast(b[start : start + n], tf.int64)
    return tf.reduce_sum(v * tf.constant([256**k for k in range(n)], tf.int64))


def _be(b: tf.Tensor, start: int, n: int) -> tf.Tensor:
    v = tf.cast(b[start : start + n], tf.int64)
    return tf.reduce_sum(v * tf.constant([256 ** (n - 1 - k) for k in range(n)], tf.int64))


def header_size(image_bytes: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """``(height, width, known)`` read from an encoded image's header, without decoding it.

    ``known`` is False for anything but JPEG, PNG and BMP (and for a header too short to hold the
    size). A JPEG whose header is corrupt raises (`tf.image.extract_jpeg_shape`'s
    InvalidArgumentError): inside `decode_batch` that is an undecodable example, not an error.
    """
    # The first 32 bytes, zero-padded: every field read below lies within them.
    head = tf.strings.substr(image_bytes, 0, 32)
    head = tf.io.decode_raw(tf.strings.substr(head + b"\0" * 32, 0, 32), tf.uint8)
    length = tf.strings.length(image_bytes)
    # PNG: 8-byte signature, then the IHDR chunk (length, "IHDR", width, height: big-endian).
    is_png = tf.logical_and(
        tf.equal(tf.strings.substr(image_bytes, 0, 8), b"\x89PNG\r\n\x1a\n"), length >= 24
    )
    # BMP: "BM", a 14-byte file header, then BITMAPINFOHEADER: width, height (int32 LE; a
    # negative height means top-down rows).
    is_bmp = tf.logical_and(tf.equal(tf.strings.substr(image_bytes, 0, 2), b"BM"), length >= 26)
    is_jpeg = tf.io.is_jpeg(image_bytes)

    def signed32(v):
        return tf.where(v >= 2**31, v - 2**32, v)

    def jpeg():
        shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
        return shape[0], shape[1]

    def other():
        height = tf.where(is_png, _be(head, 20, 4), tf.abs(signed32(_le(head, 22, 4))))
        width = tf.where(is_png, _be(head, 16, 4), signed32(_le(head, 18, 4)))
        return height, width

    height, width = tf.cond(is_jpeg, jpeg, other)
    known = tf.reduce_any(tf.stack([is_jpeg, is_png, is_bmp]))
    return height, width, known


def check_image(image_bytes: tf.Tensor, limits: ImageLimits) -> tf.Tensor:
    """The status code (`OK`, `TOO_MANY_BYTES`, ...) of one encoded image, from its header."""
    too_long = tf.strings.length(image_bytes) > limits.max_bytes

    def by_header():
        height, width, known = header_size(image_bytes)
        bad_size = tf.logical_or(
            tf.logical_or(height < 1, width < 1), height * width > limits.max_pixels
        )
        return tf.where(
            tf.logical_not(known), UNKNOWN_FORMAT, tf.where(bad_size, TOO_MANY_PIXELS, OK)
        )

    # The header is not even read for an oversized payload.
    return tf.cond(too_long, lambda: tf.constant(TOO_MANY_BYTES), by_header)


def decode_batch(
    inputs: tf.Tensor,
    to_image_bytes: Callable[[tf.Tensor], tf.Tensor],
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    image_shape: tuple[int, int, int],
    limits: ImageLimits,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Preprocessed images, validity and status of a batch of encoded inputs; never raises.

    Args:
      inputs: string ``[B]`` (encoded images or serialized Examples).
      to_image_bytes: one input to its encoded image (identity, or parsing an Example); may
        raise, which makes that example `UNDECODABLE`.
      preprocess: encoded image → float32 ``image_shape``.
      image_shape: ``(H, W, 3)``.
      limits: what an image may be.

    Returns:
      ``(images [B, H, W, 3] float32, valid [B] bool, status [B] int32)``; an invalid example's
      image is zeros.
    """
    n = tf.shape(inputs, out_type=tf.int64)[0]
    zeros = tf.zeros(image_shape, tf.float32)

    def one(i, value):
        image_bytes = to_image_bytes(value)
        status = check_image(image_bytes, limits)
        image = tf.cond(
            tf.equal(status, OK),
            lambda: tf.ensure_shape(preprocess(image_bytes), image_shape),
            lambda: zeros,
        )
        return i, image, status

    ds = tf.data.Dataset.from_tensor_slices((tf.range(n), inputs))
    # Deterministic: rows come out in order, so a batch with no bad image needs no scatter.
    ds = ds.map(one, num_parallel_calls=DECODE_PARALLELISM, deterministic=True)
    # An example whose decoding raised (corrupt data past a valid header) is dropped here; its
    # row stays UNDECODABLE below. A sentinel row keeps the batch non-empty.
    ds = ds.ignore_errors()
    ds = ds.concatenate(
        tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), zeros, tf.constant(OK)))
    )
    index, images, status = ds.batch(2**31 - 1).get_single_element()

    def all_rows():  # nothing dropped: rows 0..n-1 in order, then the sentinel
        return images[:-1], status[:-1]

    def scatter():
        keep = index >= 0
        rows = tf.boolean_mask(index, keep)[:, None]
        shape = tf.concat([[n], tf.constant(image_shape, tf.int64)], 0)
        out = tf.scatter_nd(rows, tf.boolean_mask(images, keep), shape)
        # Status + 1 scattered over zeros, so a row nobody wrote reads UNDECODABLE.
        written = tf.scatter_nd(rows, tf.boolean_mask(status, keep) + 1, [n])
        return out, tf.where(written > 0, written - 1, UNDECODABLE)

    images, status = tf.cond(tf.equal(tf.size(index, tf.int64), n + 1), all_rows, scatter)
    return images, tf.equal(status, OK), status
