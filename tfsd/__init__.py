"""tfsd: TF-native stochastic depth layers and a model zoo built on them."""

from __future__ import annotations

from tfsd import layers
from tfsd.layers import StochasticDepth, StochasticResidual

__version__ = "0.1.0"
__all__ = ["StochasticDepth", "StochasticResidual", "layers", "restore"]


def restore(
    model_dir: str,
    weights: str | None = "ema",
    *,
    checkpoint: str | None = None,
    data_dir: str | None = None,
):
    """The Keras model of a ``tfsd.train`` run, with a checkpoint's weights.

    Args:
      model_dir: the run directory (``--model_dir`` of ``tfsd.train``).
      weights: "ema" (the run's exponential moving average; an error if it kept none), "raw"
        (the trained weights) or None (EMA when the run has it, else raw).
      checkpoint: a checkpoint prefix (``RUN/checkpoints/ckpt-1000``); None takes the latest.
      data_dir: TFDS data directory, for runs on TFDS datasets (class count).

    Returns:
      A float32 ``keras.Model`` built from the run's config (stochastic depth unfolded: call it
      with ``training=False`` for inference).

    Raises:
      tfsd.export.ExportError: no run, no checkpoint, no EMA, or a checkpoint of another model.
    """
    # Imported here: `import tfsd` stays light (export pulls in training and data).
    from tfsd import export

    model, _, _, _ = export.restore_run(
        model_dir, checkpoint=checkpoint, weights=weights, data_dir=data_dir
    )
    return model
