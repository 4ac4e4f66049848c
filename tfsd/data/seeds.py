"""Stateless seeds: every random draw of the input pipeline derives from ``(seed, position)``.

The train stream is a pure function of ``(seed, start_step)`` (see `tfsd.data.pipeline`): every
random op takes an explicit int64 ``[2]`` seed folded from the user seed, a stream tag and the
example's or batch's position, so no random state exists to checkpoint or to race over.
"""

from typing import Any

import tensorflow as tf

# Stream tags folded into the user seed so shuffling, per-example augmentation and batch mixing
# draw from independent random streams.
SHUFFLE_TAG, AUGMENT_TAG, MIX_TAG = 1, 2, 3


def fold(seed: tf.Tensor, *data: Any) -> tf.Tensor:
    """Folds integers into a stateless seed: a new, independent int64 ``[2]`` seed."""
    seed = tf.cast(seed, tf.int64)
    for d in data:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(d, tf.int64))
    return seed


def root_seed(seed: int | tf.Tensor) -> tf.Tensor:
    """The int64 ``[2]`` stateless seed of a user seed."""
    return tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
