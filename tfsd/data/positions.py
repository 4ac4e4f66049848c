"""Index streams of the sources that shuffle indices (synthetic, folder), stateless per epoch.

Each element is ``(position, index)``: ``position`` is the example's place in the global stream
(all hosts together; augmentation seeds are keyed on it), ``index`` the example it reads. The
train stream at any step is computed directly, so resuming needs no saved state.
"""

import ml_collections
import tensorflow as tf

from tfsd.data.config import Plan
from tfsd.data.seeds import SHUFFLE_TAG, fold, root_seed


def train_positions(
    num_examples: int, seed: tf.Tensor, num_pipelines: int, pipeline_id: int, start: int = 0
):
    """Endless ``(position, index)`` stream: a fresh stateless permutation every epoch.

    Position p of the global stream (all hosts together) is example
    ``index_shuffle(p % n, seed_of_epoch(p // n))``; this host takes every ``num_pipelines``-th
    position from global position ``start`` on, so hosts are disjoint within an epoch and the
    stream at any step is computed directly (no state to save or replay).
    """
    shuffle_seed = fold(seed, SHUFFLE_TAG)
    n = tf.constant(num_examples, tf.int64)

    @tf.autograph.experimental.do_not_convert  # plain TF ops: no autograph rewrite needed
    def to_index(position):
        epoch_seed = fold(shuffle_seed, position // n)
        return position, tf.random.experimental.index_shuffle(position % n, epoch_seed, n - 1)

    positions = tf.data.Dataset.counter(
        start=start + pipeline_id, step=num_pipelines, dtype=tf.int64
    )
    return positions.map(to_index, num_parallel_calls=tf.data.AUTOTUNE)


def eval_positions(num_examples: int, num_pipelines: int, pipeline_id: int):
    """``(position, index)`` in order; host i takes indices i, i + k, ... (k = pipelines).

    Shard sizes differ by at most one example.
    """
    indices = tf.data.Dataset.range(pipeline_id, num_examples, num_pipelines)
    return indices.map(lambda i: (i, i))


def index_elements(
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
    """``(position, index)`` of this pipeline: a source's ``elements`` for index sources."""
    del c, split, input_context  # the same signature as every source's ``elements``
    if train:
        return train_positions(
            plan.info.num_train_examples, root_seed(seed), num_pipelines, pipeline_id, start
        )
    return eval_positions(plan.info.num_eval_examples, num_pipelines, pipeline_id)
