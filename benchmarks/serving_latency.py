"""Serving latency of tfsd exports: folded vs no stochastic depth vs unfolded vs keras.applications.

What is measured (CPU, TensorFlow graph mode as TF Serving runs it). Each variant is exported to a
SavedModel, loaded back with ``tf.saved_model.load``, and its ``serving_default`` signature is
called on a fixed batch of float images in [0, 255]; a call is timed until its first output is on
the host (``.numpy()``). Batch sizes 1 and 32 by default, each its own table rows.

* CIFAR ResNet-110 at 32×32 (54 blocks, the paper's p_L = 0.5 with inference-time scaling), three
  exports with identical signatures (tfsd.export):

  - ``no SD``: ``create_model("cifar_resnet110", survival_prob=1.0)``: plain ``Add`` residuals,
    the baseline of the group;
  - ``folded``: the stochastic-depth model exported with ``fold=True`` (the default): p multiplied
    into each branch's last BatchNorm, each block a plain ``Add``. Target ≤ 1.01×: folding makes
    stochastic depth free at serving time;
  - ``unfolded``: ``fold=False``, the layers' own inference path ``shortcut + p·residual`` (one
    extra multiply per block): measured, no target.

* EfficientNet-B0 at 224×224: ``keras.applications.EfficientNetB0(weights=None)`` exported with
  Keras' own ``model.export(path, format="tf_saved_model")`` (baseline) vs tfsd
  ``efficientnet_b0`` exported with ``tfsd.export`` (folded). Target ≤ 1.00×. The tfsd signature
  also returns probabilities and the top-5 (softmax + ``top_k`` over 1,000 classes); the
  keras.applications one returns the softmax only.

Noise control. Every variant is warmed up, then variants run **round-robin**: ``--rounds`` rounds,
each making ``--calls`` consecutive calls of every variant (the order rotates each round), so bursts
of background load hit all variants alike. The table reports the **median** call time and the
quartiles; a ratio is a median over the group baseline's median, both from the same interleaved run.

How to run (repository root, project virtualenv)::

    python benchmarks/serving_latency.py              # ~5 min on 2 cores
    python benchmarks/serving_latency.py --quick      # smoke run: ResNet-20, B0 x0.25 at 32 px
    python benchmarks/serving_latency.py --rounds 30 --calls 5 --output /tmp/serving.json

``pass`` compares a ratio with its target only for the settings the targets are stated for
(ResNet-110 at 32 px, B0 at 224 px, outside ``--quick``). The JSON (default
``benchmarks/results/serving_latency.json``) holds every call time, the configuration and the
machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# keras.applications' generic EfficientNet constructor (B0's table scaled), for --quick.
from keras.src.applications import efficientnet as keras_efficientnet

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfsd import models  # noqa: E402  (after the path set-up for running as a script)
from tfsd.serving import saved_model as saved_model_lib


class Variant:
    """One loaded SavedModel signature and its call times per batch size."""

    def __init__(self, group: str, name: str, path: str, target: float | None, baseline: bool):
        self.group, self.name, self.path = group, name, path
        self.target, self.baseline = target, baseline
        fn = tf.saved_model.load(path).signatures["serving_default"]
        (self.key,) = fn.structured_input_signature[1]
        self.fn = fn
        self.first_output = sorted(fn.structured_outputs)[0]
        self.times: dict[int, list[float]] = {}

    def call(self, images: tf.Tensor) -> float:
        t0 = time.perf_counter()
        self.fn(**{self.key: images})[self.first_output].numpy()
        return time.perf_counter() - t0


def _export_tfsd(model: keras.Model, base: str, fold: bool, preprocess: str) -> str:
    size = model.inputs[0].shape[1]
    images = np.random.default_rng(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    return saved_model_lib.export_saved_model(
        model, base, preprocess=preprocess, fold=fold, sample_images=images,
        warmup_batch_sizes=(1, 2),
    )  # fmt: skip


def build_variants(tmp: str, quick: bool) -> tuple[list[Variant], dict[str, Any]]:
    depth, effnet_size = (20, 32) if quick else (110, 224)
    resnet_kw = dict(num_classes=10, input_shape=(32, 32, 3))
    if quick:
        resnet_kw["width"] = 0.25
    resnet = f"cifar_resnet{depth}"
    group = f"ResNet-{depth} 32×32"
    sd_model = models.create_model(resnet, survival_prob=0.5, **resnet_kw)
    plain = models.create_model(resnet, survival_prob=1.0, **resnet_kw)
    judged = not quick
    variants = [
        Variant(group, f"ResNet-{depth} no SD", _export_tfsd(plain, f"{tmp}/plain", True, "none"),
                None, True),
        Variant(group, f"ResNet-{depth} tfsd folded",
                _export_tfsd(sd_model, f"{tmp}/folded", True, "none"), 1.01 if judged else None,
                False),
        Variant(group, f"ResNet-{depth} tfsd unfolded",
                _export_tfsd(sd_model, f"{tmp}/unfolded", False, "none"), None, False),
    ]  # fmt: skip
    group = f"EfficientNet-B0{' x0.25' if quick else ''} {effnet_size}×{effnet_size}"
    shape = (effnet_size, effnet_size, 3)
    if quick:  # smoke run: both B0s built from B0's table scaled by 0.25 (width and depth)
        kapp = keras_efficientnet.EfficientNet(
            0.25, 0.25, effnet_size, name="efficientnet_scaled", weights=None, input_shape=shape
        )
        scale = dict(width=0.25, depth=0.25)
    else:
        kapp = keras.applications.EfficientNetB0(weights=None, input_shape=shape)
        scale = {}
    kapp_path = f"{tmp}/kapp/1"
    kapp.export(kapp_path, format="tf_saved_model", verbose=False)
    tfsd_b0 = models.create_model("efficientnet_b0", num_classes=1000, input_shape=shape, **scale)
    variants += [
        Variant(group, "keras.applications EfficientNetB0 (model.export)", kapp_path, None, True),
        Variant(group, "tfsd efficientnet_b0 (tfsd.export, folded)",
                _export_tfsd(tfsd_b0, f"{tmp}/b0", True, "inception"),
                1.00 if judged else None, False),
    ]  # fmt: skip
    config = {"resnet": resnet, "resnet_kwargs": {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in resnet_kw.items()},
              "effnet_size": effnet_size, "effnet_scale": 0.25 if quick else 1.0,
              "quick": quick}  # fmt: skip
    return variants, config


def run(variants: list[Variant], batch_sizes: list[int], rounds: int, calls: int) -> None:
    rng = np.random.default_rng(1)
    for batch in batch_sizes:
        inputs = {}
        for v in variants:
            size = v.fn.structured_input_signature[1][v.key].shape[1]
            if size not in inputs:
                inputs[size] = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)), tf.float32)
            v.times[batch] = []
            for _ in range(2):  # warm-up: first calls pay for graph optimisation and allocation
                v.call(inputs[size])
        for r in range(rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for v in order:
                size = v.fn.structured_input_signature[1][v.key].shape[1]
                v.times[batch] += [v.call(inputs[size]) for _ in range(calls)]


def summarize(variants: list[Variant], batch_sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for batch in batch_sizes:
        base = {v.group: statistics.median(v.times[batch]) for v in variants if v.baseline}
        for v in variants:
            ms = [1000 * t for t in v.times[batch]]
            median = statistics.median(ms)
            q = np.percentile(ms, [25, 75])
            ratio = median / (1000 * base[v.group])
            rows.append({
                "group": v.group, "variant": v.name, "batch": batch, "median_ms": median,
                "p25_ms": float(q[0]), "p75_ms": float(q[1]), "ratio": round(ratio, 4),
                "target": v.target,
                "pass": None if v.target is None else bool(ratio <= v.target),
                "n_calls": len(ms), "call_ms": ms,
            })  # fmt: skip
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | batch | ms/call (median) | p25–p75 | ratio | target | |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        target = "—" if r["target"] is None else f"≤ {r['target']:.2f}"
        verdict = "" if r["pass"] is None else ("met" if r["pass"] else "NOT met")
        lines.append(
            f"| {r['variant']} | {r['batch']} | {r['median_ms']:.2f} | "
            f"{r['p25_ms']:.1f}–{r['p75_ms']:.1f} | {r['ratio']:.3f} | {target} | {verdict} |"
        )
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "load_average": load,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: ResNet-20, B0 x0.25 at 32 px")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--calls", type=int, default=5, help="calls per variant per round")
    p.add_argument("--batch-sizes", default="1,32")
    p.add_argument("--output", default="benchmarks/results/serving_latency.json")
    args = p.parse_args(argv)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if min(batch_sizes) < 1 or args.rounds < 1 or args.calls < 1:
        p.error("batch sizes, --rounds and --calls must be positive")
    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = machine_info()["load_average"]
    with tempfile.TemporaryDirectory() as tmp:
        variants, config = build_variants(tmp, args.quick)
        run(variants, batch_sizes, args.rounds, args.calls)
    rows = summarize(variants, batch_sizes)
    table = markdown(rows)
    print(table)
    if args.quick:
        print("(--quick: smoke run, measured but not judged against the targets)")
    out = {
        "benchmark": "serving_latency", "started_utc": started.isoformat(timespec="seconds"),
        "config": {**config, "rounds": args.rounds, "calls": args.calls,
                   "batch_sizes": batch_sizes},
        "machine": {**machine_info(), "load_average_before": load_before},
        "rows": rows, "table_markdown": table,
    }  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
