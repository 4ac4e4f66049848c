"""``tfsd.StochasticDepth`` as a drop-in for keras-cv's and TF Addons' ``StochasticDepth``.

Reference: the installed keras-cv 0.9.0 layer itself (``keras_cv.layers.StochasticDepth``, a real
artifact, not tfsd's), and the usage both libraries document, ``StochasticDepth()([x, r])``:
keras-cv's default ``rate=0.5`` is a drop rate (survival ``1 - rate``,
``keras_cv/src/layers/regularization/stochastic_depth.py``), TF Addons' default
``survival_probability=0.5``; tfsd's default ``survival_prob`` is 0.5, so all three agree.
The cases follow keras-cv's own ``stochastic_depth_test.py`` (eval mode, training mode).
"""

import numpy as np
import pytest
import tensorflow as tf
from keras_cv.layers import StochasticDepth as KerasCVStochasticDepth

from tfsd import StochasticDepth

FEATURE_SHAPE = (1, 14, 14, 256)  # keras-cv's test shape


def test_default_call_runs_and_keeps_half():
    x = tf.random.stateless_uniform(FEATURE_SHAPE, seed=[0, 1])
    layer = StochasticDepth()
    assert layer.survival_prob == 0.5
    np.testing.assert_allclose(layer([x, x], training=False), x * 1.5, rtol=1e-6)


@pytest.mark.parametrize("rate", [0.5, 0.2, 0.9])
def test_eval_mode_equals_keras_cv(rate):
    """Inference: ``shortcut + (1 - rate) * residual`` in both (keras-cv's ``rate`` is a drop
    rate; tfsd takes the survival probability)."""
    shortcut = tf.random.stateless_uniform(FEATURE_SHAPE, seed=[1, 2])
    residual = tf.random.stateless_uniform(FEATURE_SHAPE, seed=[3, 4])
    theirs = KerasCVStochasticDepth(rate=rate)([shortcut, residual], training=False)
    ours = StochasticDepth(1.0 - rate)([shortcut, residual], training=False)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    if rate == 0.5:  # the defaults of both
        defaults = StochasticDepth()([shortcut, residual], training=False)
        np.testing.assert_allclose(defaults, KerasCVStochasticDepth()([shortcut, residual]))


def test_training_mode_keeps_or_drops_the_whole_batch():
    """keras-cv's training-mode check: the sum is the input's or twice it (one batch gate)."""
    x = tf.random.stateless_uniform(FEATURE_SHAPE, seed=[5, 6])
    layer = StochasticDepth(seed=3)
    sums = set()
    for _ in range(16):  # P(all 16 draws equal) = 2 * 0.5**16: both outcomes occur
        out = float(tf.reduce_sum(layer([x, x], training=True)))
        total = float(tf.reduce_sum(x))
        assert np.isclose(out, total, rtol=1e-5) or np.isclose(out, 2 * total, rtol=1e-5)
        sums.add(round(out / total))
    assert sums == {1, 2}


def test_three_inputs_are_refused():
    x = tf.zeros(FEATURE_SHAPE)
    with pytest.raises(ValueError, match="pair"):
        StochasticDepth()([x, x, x])
