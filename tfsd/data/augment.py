"""Augmentation from Keras core layers, driven by explicit stateless seeds.

**RandAugment** (Cubuk et al., 2020), **MixUp** (Zhang et al., 2018) and **CutMix** (Yun et al.,
2019) come from ``keras.layers.RandAugment`` / ``MixUp`` / ``CutMix``, each call seeded by a
given seed tensor (see ``_SeedStream``) so the stream is reproducible and needs no state. When
both MixUp and CutMix are on, each batch uses one of them with probability 0.5, like timm's
``Mixup``.
"""

import contextlib
import functools
from collections.abc import Callable

import keras
import tensorflow as tf

from tfsd.data.seeds import fold


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
        return fold(self._base, self._draws)


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
            return apply(mixup, images, labels, fold(seed, 1))
        if mixup is None:
            return apply(cutmix, images, labels, fold(seed, 2))
        use_cutmix = tf.random.stateless_uniform([], fold(seed, 0)) < 0.5
        return tf.cond(
            use_cutmix,
            lambda: apply(cutmix, images, labels, fold(seed, 2)),
            lambda: apply(mixup, images, labels, fold(seed, 1)),
        )

    return mix
