"""A short tour of tfsd's layers: a residual stack with the paper's linear schedule.

Run ``python -m tfsd.demo``. It builds an 8-block residual MLP whose blocks are
`tfsd.layers.StochasticResidual` layers with survival probabilities from
``survival_schedule(8, 0.5)``, runs training steps, and prints, per block, the survival
probability, how often the block was kept, and how many times its branch was actually computed
(equal to the kept count: dropped branches are skipped), then checks that inference is
deterministic and has no random op.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import tensorflow as tf

from tfsd import layers as sdl


@keras.saving.register_keras_serializable(package="tfsd_demo")
class _CountingDense(keras.layers.Layer):
    """A Dense + ReLU branch that counts its own executions."""

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = keras.layers.Dense(units, activation="relu")

    def build(self, input_shape):
        self.dense.build(input_shape)
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x, training=None):
        self.calls.assign_add(1.0)
        return self.dense(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--final_survival", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    probs = sdl.survival_schedule(args.blocks, args.final_survival, "linear")
    inputs = keras.Input((16,))
    x, branches = inputs, []
    for i, p in enumerate(probs):
        branch = _CountingDense(16, name=f"block{i}_branch")
        branches.append(branch)
        x = sdl.StochasticResidual(branch, p, mode="batch", seed=i, name=f"block{i}")(x)
    model = keras.Model(inputs, x)
    blocks = sdl.stochastic_depth_layers(model)

    batch = tf.random.stateless_normal([32, 16], seed=[0, 0])
    step = tf.function(lambda b: model(b, training=True))
    kept = np.zeros(args.blocks)
    for _ in range(args.steps):
        step(batch)
        kept += [float(b.keep_rate.numpy()) for b in blocks]

    print(f"{args.steps} training steps, linear schedule to p_L = {args.final_survival}")
    print(f"{'block':>5} {'p_l':>6} {'kept':>6} {'branch runs':>11}")
    for i, p in enumerate(probs):
        runs = int(branches[i].calls.numpy())
        print(f"{i:>5} {p:>6.3f} {kept[i] / args.steps:>6.3f} {runs:>11d}")
    print(
        f"expected active blocks per step {sum(probs):.2f}, observed {kept.sum() / args.steps:.2f}"
    )
    a, b = model(batch), model(batch)
    graph = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec([None, 16])
    )
    random_ops = [op.type for op in graph.graph.get_operations() if "Random" in op.type]
    print(f"inference deterministic: {bool(np.array_equal(a, b))}; random ops: {random_ops}")


if __name__ == "__main__":
    main()
