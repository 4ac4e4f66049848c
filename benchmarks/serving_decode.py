"""Cost of bounded, per-example decoding in ``serving_bytes`` (`tfsd.serving.image_limits`).

What is measured (CPU, graph mode as TF Serving runs it): two ``tf.function``s over the same
in-memory model and eval preprocessing, called on the same batch of encoded JPEGs:

* ``per-example``: ``Servable.serving_bytes`` as exported: header checks against the size limits,
  then decoding in a ``tf.data`` pipeline with ``ignore_errors`` (a bad image fails its own row);
* ``map_fn`` (baseline): the decoding tfsd exported before, ``tf.map_fn(preprocess)`` over the
  batch, where one bad image fails the whole call (and a batch TF Serving merged it into).

Both use today's ``tfsd.data`` preprocessing (uint8 crop/resize before the float cast), so the
ratio isolates the per-example machinery. The model is global average pooling and one dense layer,
so that decoding, not the network, dominates: the worst case for the overhead.
Variants run round-robin (``--rounds`` rounds of ``--calls`` calls each); the table reports median
call times and per-example / map_fn.

    python benchmarks/serving_decode.py            # ~1 min on 2 cores
    python benchmarks/serving_decode.py --rounds 20 --output /tmp/decode.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from tfsd.serving import signatures

# (preprocessing, model input side, JPEG side, batch)
CASES = [
    ("inception", 224, 256, 1),
    ("inception", 224, 256, 32),
    ("inception", 224, 2048, 4),
    ("none", 32, 256, 32),
]


def _functions(preprocess: str, size: int):
    inputs = keras.Input((size, size, 3))
    model = keras.Model(
        inputs, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling2D()(inputs))
    )
    servable = signatures.Servable(model, signatures.preprocess_fn(preprocess, size), None)
    spec = [tf.TensorSpec([None], tf.string)]

    @tf.function(input_signature=spec)
    def per_example(image_bytes):
        return servable.serving_bytes(image_bytes)["logits"]

    @tf.function(input_signature=spec)
    def map_fn(image_bytes):
        images = tf.map_fn(
            servable.preprocess,
            image_bytes,
            fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32),
        )
        return servable.outputs(images)["logits"]

    return {"map_fn": map_fn, "per-example": per_example}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--output", default="benchmarks/results/serving_decode.json")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for preprocess, size, side, batch in CASES:
        fns = _functions(preprocess, size)
        # Smooth random images (a noise JPEG would be unrealistically large and slow to decode).
        base = rng.integers(0, 256, (batch, side // 16, side // 16, 3)).astype(np.float32)
        pixels = tf.cast(tf.image.resize(base, [side, side]), tf.uint8).numpy()
        x = tf.constant([tf.io.encode_jpeg(p, quality=90).numpy() for p in pixels])
        for fn in fns.values():
            fn(x).numpy()  # trace and warm up
        times = {name: [] for name in fns}
        for r in range(args.rounds):
            order = list(fns)[r % 2 :] + list(fns)[: r % 2]
            for name in order:
                for _ in range(args.calls):
                    start = time.perf_counter()
                    fns[name](x).numpy()
                    times[name].append(time.perf_counter() - start)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        rows.append({
            "preprocess": preprocess, "model_side": size, "jpeg_side": side, "batch": batch,
            "median_ms": med, "ratio": med["per-example"] / med["map_fn"], "times_s": times,
        })  # fmt: skip
    print(
        "| preprocess | input | JPEG | batch | map_fn ms | per-example ms | per-example / map_fn |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["median_ms"]
        print(
            f"| {r['preprocess']} | {r['model_side']} | {r['jpeg_side']} | {r['batch']} | "
            f"{m['map_fn']:.2f} | {m['per-example']:.2f} | {r['ratio']:.2f}x |"
        )
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({"rows": rows, "machine": platform.platform(), "cpus": os.cpu_count(),
                   "tensorflow": tf.__version__, "date": time.strftime("%Y-%m-%d")}, f)  # fmt: skip


if __name__ == "__main__":
    main()
