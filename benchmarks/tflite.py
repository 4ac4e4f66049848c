"""TFLite size and batch-1 CPU latency of EfficientNet-B0 and EfficientNet-Lite0, per quantization.

    python benchmarks/tflite.py --out=/tmp/tflite_bench.json [--models=efficientnet_b0,...]

Each model is built at full size (224×224, 1000 classes, untrained weights: size and latency do
not depend on the weights' values), exported with `tfsd.export` (folded) and converted with
`tfsd.tflite` to float, float16, dynamic-range and int8 (calibrated on synthetic eval images).
Latency is measured in LiteRT at batch 1 with a fixed ``num_threads``: the models' interpreters
take turns (interleaved rounds of ``--runs_per_round`` invokes) and the median over all rounds
is reported, so load on the shared machine hits every quantization alike. ``speed vs float`` is
float latency / latency, measured side by side in the same run. The target is int8 size ≤ 0.30×
float. Agreement with the SavedModel is not meaningful for untrained weights and is measured by
the tests (tests/test_tflite_*.py) and by ``python -m tfsd.tflite`` on trained runs.

Reference for context, not claimed: EfficientNet-Lite0 reaches 75.1% (float) / 74.4% (int8)
ImageNet top-1, 12 ms / 6.5 ms on a Pixel 4 CPU with 4 threads (the TF EfficientNet-Lite
README, ../shared/REFERENCES.md).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

# This checkout's tfsd, not an installed one (as benchmarks/serving_latency.py).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tfsd.serving import saved_model as saved_model_lib  # noqa: E402  (after the path set-up)
from tfsd.serving import tflite_convert, tflite_verify

_MODELS = flags.DEFINE_list("models", ["efficientnet_b0", "efficientnet_lite0"], "Zoo models.")
_QUANTS = flags.DEFINE_list("quantizations", ["none", "float16", "dynamic", "int8"], "Kinds.")
_SIZE = flags.DEFINE_integer("image_size", 224, "Input resolution.")
_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Classifier classes.")
_CALIBRATION = flags.DEFINE_integer("calibration_steps", 32, "int8 calibration images.")
_THREADS = flags.DEFINE_integer("num_threads", 1, "LiteRT threads.")
_ROUNDS = flags.DEFINE_integer("rounds", 10, "Interleaved rounds.")
_RUNS = flags.DEFINE_integer("runs_per_round", 5, "Invokes per model per round.")
_WIDTH = flags.DEFINE_float("width", 1.0, "Width and depth multiplier (< 1: smoke tests only).")
_OUT = flags.DEFINE_string("out", None, "JSON output path.")


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def run(
    model_names, quantizations, *, image_size, num_classes, calibration_steps, num_threads,
    rounds, runs_per_round, width=1.0,
) -> dict:  # fmt: skip
    """Builds, exports, converts and times every (model, quantization); returns the results."""
    import keras

    from tfsd import data as data_lib
    from tfsd import models

    load_before = _load()
    ds = data_lib.build_dataset(
        {"name": "synthetic"}, split="eval", global_batch_size=calibration_steps + 1,
        image_size=image_size,
    )  # fmt: skip
    images = next(iter(ds))[0].numpy()
    data = tflite_verify.EvalData(images[1:], images[:1], None, "synthetic eval images")
    rows, lites = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in model_names:
            keras.utils.set_random_seed(0)
            scale = {} if width == 1.0 else {"width": width, "depth": width}
            model = models.create_model(
                name, num_classes=num_classes, input_shape=(image_size, image_size, 3), **scale
            )
            params = model.count_params()
            path = saved_model_lib.export_saved_model(
                model, os.path.join(tmp, name), preprocess="inception",
                sample_images=np.repeat(images[:1], 8, 0), warmup_batch_sizes=(1,),
            )  # fmt: skip
            serving = tflite_convert.ServingModel(path)
            for quantize in quantizations:
                start = time.perf_counter()
                if quantize == "int8":
                    content = tflite_convert.quantize_int8(
                        tflite_convert.calibrate_int8(serving, data.calibration)
                    )
                else:
                    content = tflite_convert.convert(serving, quantize)
                seconds = time.perf_counter() - start
                ops = tflite_convert.model_ops(content)
                rows.append({
                    "model": name, "params": params, "quantization": quantize,
                    "size_bytes": len(content), "convert_s": round(seconds, 1),
                    "float_ops": len(tflite_convert.float_ops(content)), "ops": len(ops),
                    "flex_ops": sorted({n for n, _, _ in ops if n.startswith("Flex")}),
                })  # fmt: skip
                lites.append(tflite_verify.LiteModel(content, num_threads=num_threads))
                print(f"converted {name} {quantize}: {len(content) / 2**20:.2f} MiB", flush=True)
        # Interleaved timing: every model runs runs_per_round invokes per round.
        times = [[] for _ in lites]
        for lite in lites:
            lite.latency_ms(images[0], runs=1, warmup=3)
        for _ in range(rounds):
            for i, lite in enumerate(lites):
                times[i] += lite.latency_ms(images[0], runs=runs_per_round, warmup=1)
    for row, t in zip(rows, times):
        row["latency_ms"] = float(np.median(t))
        row["latency_iqr_ms"] = [float(np.percentile(t, 25)), float(np.percentile(t, 75))]
    for row in rows:
        base = next(
            r for r in rows if r["model"] == row["model"] and r["quantization"] == "none"
        ) if "none" in quantizations else None  # fmt: skip
        if base:
            row["size_vs_float"] = row["size_bytes"] / base["size_bytes"]
            row["speed_vs_float"] = base["latency_ms"] / row["latency_ms"]
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{os.cpu_count()} CPUs, {platform.system()}".strip(),  # fmt: skip
        "load_before": load_before,
        "load_after": _load(),
        "num_threads": num_threads,
        "image_size": image_size,
        "width": width,
        "rounds": rounds,
        "runs_per_round": runs_per_round,
        "rows": rows,
    }


def table(result: dict) -> str:
    """A markdown table of the results."""
    lines = [
        "| model | quantization | size (MiB) | size vs float | latency (ms, median) | "
        "speed vs float | float ops |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['quantization']} | {r['size_bytes'] / 2**20:.2f} | "
            f"{r.get('size_vs_float', float('nan')):.2f}× | {r['latency_ms']:.1f} | "
            f"{r.get('speed_vs_float', float('nan')):.2f}× | {r['float_ops']} / {r['ops']} |"
        )
    return "\n".join(lines)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    result = run(
        _MODELS.value, _QUANTS.value, image_size=_SIZE.value, num_classes=_CLASSES.value,
        calibration_steps=_CALIBRATION.value, num_threads=_THREADS.value, rounds=_ROUNDS.value,
        runs_per_round=_RUNS.value, width=_WIDTH.value,
    )  # fmt: skip
    print(
        f"{result['date']}, {result['machine']}, {result['num_threads']} thread(s), "
        f"load before {result['load_before']}, after {result['load_after']}"
    )
    print(table(result))
    for r in result["rows"]:
        if r["quantization"] == "int8" and "size_vs_float" in r:
            ok = "meets" if r["size_vs_float"] <= 0.30 else "MISSES"
            print(f"{r['model']}: int8 size {r['size_vs_float']:.3f}x float ({ok} <= 0.30x)")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    app.run(main)
