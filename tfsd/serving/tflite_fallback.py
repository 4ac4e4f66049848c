"""int8 with automatic float fallback of the ops that quantize worst.

EfficientNet's swish and squeeze-excite lose 15+ points of top-1 under naive int8 post-training
quantization (tensorflow/tpu#549, #669; tensorflow/tensorflow#55660). When int8 top-1 agreement
is below ``min_agreement``, TF's ``QuantizationDebugger``
(tensorflow/lite/tools/optimize/debugging/python/debugger.py) measures each quantized op's error;
the worst by noise-to-signal are kept in float through ``mlir_quantize(denylisted_nodes=...)``,
1, 2, 4, ... of them, until the agreement holds or the float-op budget is spent. See
``docs/tflite.md``.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from typing import Any

import numpy as np
from absl import logging
from tensorflow.lite.tools.optimize.debugging.python import debugger

from tfsd.serving.tflite_convert import (
    ServingModel,
    TFLiteError,
    calibrate_int8,
    float_ops,
    quantize_int8,
    representative_dataset,
)
from tfsd.serving.tflite_verify import EvalData, verify_tflite

FALLBACKS = ("none", "auto")


DEFAULT_MIN_AGREEMENT = 0.98


DEFAULT_MAX_FLOAT_FRACTION = 0.25  # at most a quarter of the quantized ops kept in float.


DEBUG_IMAGES = 32  # calibration images the QuantizationDebugger runs to rank ops.


def _noise_to_signal(
    float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int
) -> float:
    """RMS quantization error of one op over the spread of its float output.

    The denominator is at least one quantization step, so a near-constant tensor (a squeeze-
    excite gate on a 1x1 map) is not ranked by dividing by ~0.
    """
    error = (quantized.astype(np.float32) - zero_point) * scale - float_values
    return float(np.sqrt(np.mean(error**2)) / max(float(np.std(float_values)), scale))


def rank_quantization_error(calibrated: bytes, images: np.ndarray) -> list[dict[str, Any]]:
    """Quantized ops by error, worst first, from QuantizationDebugger layer statistics.

    Each op runs on the quantized output of the op before (NumericVerify ops compare it with the
    float op on the same input), so an op's error is its own. Ranked by noise-to-signal ratio
    (RMS error over the float output's standard deviation), not by the debugger guide's RMSE /
    scale: RMSE / scale is ~0.29 (uniform rounding noise, 1/sqrt(12)) for almost every op, and
    on a tiny EfficientNet keeping the top ops by it in float did not raise agreement, while
    the ops whose error is large against their signal (squeeze-excite expand convs and gates)
    are the ones that move the logits (measured while building this; README, "TFLite").

    Returns:
      ``[{"node", "op", "noise_to_signal", "rmse_over_scale"}]``; ``node`` is the tensor name
      ``denylisted_nodes`` takes.
    """

    debug_model = quantize_int8(calibrated, debug=True)
    options = debugger.QuantizationDebugOptions(
        layer_direct_compare_metrics={"noise_to_signal": _noise_to_signal}
    )
    with warnings.catch_warnings():
        # The debugger runs TF's own (deprecated) tf.lite.Interpreter: NumericVerify is a debug
        # op of that runtime. Verification and latency use LiteRT.
        warnings.simplefilter("ignore", UserWarning)
        dbg = debugger.QuantizationDebugger(
            quant_debug_model_content=debug_model,
            debug_dataset=representative_dataset(images[:DEBUG_IMAGES]),
            debug_options=options,
        )
        dbg.run()
    dump = io.StringIO()
    dbg.layer_statistics_dump(dump)
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        scale = float(row["scale"])
        rmse = math.sqrt(float(row["mean_squared_error"]))
        rows.append({
            "node": row["tensor_name"],
            "op": row["op_name"],
            "noise_to_signal": float(row["noise_to_signal"]),
            "rmse_over_scale": rmse / scale if scale > 0 else math.inf,
        })  # fmt: skip
    rows.sort(key=lambda r: -r["noise_to_signal"])
    return rows


def int8_with_fallback(
    model: ServingModel,
    data: EvalData,
    *,
    int8_io: bool = False,
    fallback: str = "none",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION,
    num_threads: int = 1,
    latency_runs: int = 50,
) -> tuple[bytes, dict[str, Any]]:
    """int8 conversion, then (``fallback="auto"``) float fallback of the worst ops if needed.

    Returns:
      ``(model bytes, report)``: the report is `verify_tflite`'s for the returned model plus
      ``fallback``: the attempts (float-op count, agreement, size, latency), the ops kept in
      float, the budget, and the plain int8 model's numbers for comparison.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"int8_fallback must be one of {FALLBACKS}, got {fallback!r}.")
    if not 0.0 < min_agreement <= 1.0 or not 0.0 <= max_float_fraction <= 1.0:
        raise ValueError(
            f"min_agreement must be in (0, 1] and max_float_fraction in [0, 1], got "
            f"{min_agreement} and {max_float_fraction}."
        )
    calibrated = calibrate_int8(model, data.calibration)
    verify_kwargs = dict(num_threads=num_threads, latency_runs=latency_runs)
    plain = quantize_int8(calibrated, int8_io=int8_io)
    plain_report = verify_tflite(plain, model, data.verification, data.labels, **verify_kwargs)
    left_float = float_ops(plain)
    if fallback == "none" and left_float:
        raise TFLiteError(
            f"{len(left_float)} op(s) have no int8 kernel and stay float "
            f"({sorted({n for n, _ in left_float})}); use --int8_fallback=auto to accept "
            "float ops, or --quantize=dynamic."
        )
    info: dict[str, Any] = {
        "mode": fallback,
        "min_agreement": min_agreement,
        "int8_top1_agreement": plain_report["top1_agreement"],
        "attempts": [],
        "float_nodes": [],
    }
    best, best_report = plain, plain_report
    if fallback == "auto" and plain_report["top1_agreement"] < min_agreement:
        ranked = rank_quantization_error(calibrated, data.calibration)
        budget = int(math.floor(max_float_fraction * len(ranked)))
        info.update(
            budget_float_ops=budget,
            quantized_ops=len(ranked),
            int8_size_bytes=plain_report["size_bytes"],
            int8_latency_ms=plain_report["latency_ms"],
        )
        # 1, 2, 4, ... float ops, then the whole budget: log2(budget) re-quantizations at most,
        # each without re-calibration.
        counts = [2**i for i in range(budget.bit_length()) if 2**i < budget]
        counts += [budget] if budget > 0 else []
        for count in counts:
            nodes = [r["node"] for r in ranked[:count]]
            candidate = quantize_int8(calibrated, int8_io=int8_io, denylisted_nodes=nodes)
            report = verify_tflite(
                candidate, model, data.verification, data.labels, **verify_kwargs
            )
            info["attempts"].append({
                "float_ops": count, "top1_agreement": report["top1_agreement"],
                "size_bytes": report["size_bytes"], "latency_ms": report["latency_ms"],
            })  # fmt: skip
            logging.info(
                "Float fallback of %d ops: agreement %.4f", count, report["top1_agreement"]
            )
            if report["top1_agreement"] > best_report["top1_agreement"]:
                best, best_report = candidate, report
                info["float_nodes"] = ranked[:count]
            if report["top1_agreement"] >= min_agreement:
                break
        if info["float_nodes"]:
            info["size_cost"] = best_report["size_bytes"] / plain_report["size_bytes"]
            info["latency_cost"] = best_report["latency_ms"] / plain_report["latency_ms"]
    info["meets_min_agreement"] = best_report["top1_agreement"] >= min_agreement
    best_report["fallback"] = info
    return best, best_report
