"""Strategy construction for the training loop.

Every training step goes through ``strategy.run``, so the loop is the same on one CPU, several
GPUs or a TPU; only the strategy built here changes.
"""

from __future__ import annotations

import ml_collections
import tensorflow as tf


def get_strategy(config: ml_collections.ConfigDict) -> tf.distribute.Strategy:
    """Builds the strategy named by ``config.strategy``.

    * ``default``: TF's default (single-device) strategy; ``strategy.run`` calls the function
      directly.
    * ``mirrored``: ``tf.distribute.MirroredStrategy`` over all local GPUs (or the CPU).
    * ``one_device``: ``tf.distribute.OneDeviceStrategy`` on the first GPU, else the CPU.

    TPUStrategy and MultiWorkerMirroredStrategy are not implemented yet: asking for them raises a
    ValueError that says so (they come with the distribution issue).
    """
    name = config.strategy
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    raise ValueError(
        f"Unknown or unsupported distribute.strategy {name!r}: supported are 'default', "
        "'mirrored' and 'one_device' (TPU and multi-worker strategies are not implemented yet)."
    )
