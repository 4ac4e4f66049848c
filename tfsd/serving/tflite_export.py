"""One call: convert a tfsd export to ``.tflite``, verify it, write it and its JSON report.

The library of ``tfsd.tflite`` (``docs/tflite.md``): quantizations ``none``, ``float16``,
``dynamic`` and ``int8`` (with ``int8_fallback="auto"``), verification in LiteRT on held-out eval
images, and an atomic, no-overwrite write.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

import tensorflow as tf

from tfsd.serving import tflite_images
from tfsd.serving.tflite_convert import QUANTIZATIONS, ServingModel, TFLiteError, convert
from tfsd.serving.tflite_fallback import (
    DEFAULT_MAX_FLOAT_FRACTION,
    DEFAULT_MIN_AGREEMENT,
    FALLBACKS,
    int8_with_fallback,
)
from tfsd.serving.tflite_verify import (
    DEFAULT_CALIBRATION_STEPS,
    DEFAULT_VERIFY_IMAGES,
    EvalData,
    load_eval_data,
    verify_tflite,
)

_TMP_TAG = ".tfsd-tflite-tmp-"


def _check_output(path: str, overwrite: bool) -> None:
    if tf.io.gfile.isdir(path):
        raise TFLiteError(f"{path} is a directory; --output names the .tflite file.")
    if tf.io.gfile.exists(path) and not overwrite:
        raise TFLiteError(f"{path} exists; pass --overwrite to replace it. Nothing was written.")


def write_atomic(path: str, content: bytes, *, overwrite: bool = False) -> None:
    """Writes ``content`` to ``path`` through a temporary file and one rename.

    A reader never sees a partial file. Without ``overwrite`` an existing file is never replaced,
    even one that appears while writing (a hard link fails on an existing name, atomically).
    """
    _check_output(path, overwrite)
    directory = os.path.dirname(path) or "."
    tf.io.gfile.makedirs(directory)
    tmp = os.path.join(directory, f"{_TMP_TAG}{uuid.uuid4().hex}")
    with tf.io.gfile.GFile(tmp, "wb") as f:
        f.write(content)
    try:
        if "://" in path:
            tf.io.gfile.rename(tmp, path, overwrite=overwrite)
        elif overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError as e:
                raise TFLiteError(f"{path} appeared while writing; nothing was overwritten.") from e
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)


def report_path(output: str) -> str:
    """Where the JSON report of ``output`` goes: ``model.tflite`` → ``model.tflite.json``."""
    return output + ".json"


def convert_and_verify(
    saved_model: str,
    output: str,
    *,
    quantize: str = "none",
    model_dir: str | None = None,
    representative_config: str | None = None,
    calibration_images: str | None = None,
    calibration_preprocess: str = "inception",
    data_dir: str | None = None,
    calibration_steps: int = DEFAULT_CALIBRATION_STEPS,
    verify_images: int = DEFAULT_VERIFY_IMAGES,
    int8_io: bool = False,
    int8_fallback: str = "none",
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    max_float_fraction: float = DEFAULT_MAX_FLOAT_FRACTION,
    num_threads: int = 1,
    latency_runs: int = 50,
    overwrite: bool = False,
    verify_only: bool = False,
    data: EvalData | None = None,
) -> dict[str, Any]:
    """Converts ``saved_model`` to ``output`` and verifies it; or verifies an existing file.

    Args:
      saved_model: a version directory ``BASE/<N>`` of `tfsd.export`.
      output: the ``.tflite`` path; the JSON report goes to ``output + ".json"``.
      quantize: ``none`` | ``float16`` | ``dynamic`` | ``int8``.
      model_dir / representative_config: where eval images come from (the run's dataset, or a
        named config such as ``cifar10_resnet110:runlocal``); int8 needs one of them or
        ``calibration_images``.
      calibration_images: a folder of any images for exports without a run
        (`tfsd.serving.tflite_images`): decoded with ``calibration_preprocess`` (checked against
        the export's serving_bytes), the first ``calibration_steps`` calibrate, the rest verify.
      calibration_steps: calibration images (batch 1 each), the first of the eval split.
      verify_images: held-out verification images, the ones after the calibration images,
        whatever the quantization: every conversion (and ``verify_only``) with the same data
        flags is verified on the same images, never on calibration images.
      int8_io: int8 only: uint8 input (raw pixels, scale 1, zero point 0) and outputs.
      int8_fallback: ``none`` | ``auto`` (see `int8_with_fallback`).
      min_agreement: the int8 top-1 agreement the fallback aims for.
      max_float_fraction: the fallback's budget, a fraction of the quantized ops.
      num_threads: LiteRT threads for the latency measurement.
      latency_runs: timed invokes (median reported).
      overwrite: replace an existing ``output``.
      verify_only: verify the existing ``output`` against ``saved_model``; convert nothing.
      data: eval images already loaded (tests); overrides the data flags.

    Returns:
      The report (also written as JSON beside ``output``).

    Raises:
      ValueError: bad arguments. TFLiteError: a conversion that cannot be made or verified, or an
        existing output without ``overwrite``; nothing is written then.
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantize!r}; choose one of {QUANTIZATIONS}.")
    if int8_io and quantize != "int8":
        raise ValueError("int8_io needs quantize='int8' (integer I/O needs integer activations).")
    if int8_fallback not in FALLBACKS:
        raise ValueError(f"int8_fallback must be one of {FALLBACKS}, got {int8_fallback!r}.")
    if num_threads < 1 or latency_runs < 1:
        raise ValueError("num_threads and latency_runs must be >= 1.")
    if verify_only:
        if not tf.io.gfile.exists(output):
            raise TFLiteError(f"--verify: {output} does not exist.")
    else:
        _check_output(output, overwrite)  # before minutes of conversion, not after.
    if (
        quantize == "int8"
        and not verify_only
        and data is None
        and not (model_dir or representative_config or calibration_images)
    ):
        raise TFLiteError(
            "int8 quantization needs representative data: pass --model_dir=RUN, "
            "--representative_config=NAME[:ARG] or --calibration_images=DIR (images calibrate "
            "the activations)."
        )
    if calibration_images and (model_dir or representative_config):
        raise ValueError("Give one of model_dir, representative_config and calibration_images.")
    model = ServingModel(saved_model)
    if model.height != model.width:
        raise TFLiteError(
            f"Eval images are square; {saved_model} takes {model.height}x{model.width}."
        )
    if data is None and calibration_images:
        data = tflite_images.load_folder_data(
            calibration_images, model, preprocess=calibration_preprocess,
            calibration_steps=calibration_steps, verify_images=verify_images,
        )  # fmt: skip
    if data is None:
        data = load_eval_data(
            image_size=model.height, model_dir=model_dir,
            representative_config=representative_config, data_dir=data_dir,
            calibration_steps=calibration_steps,
            verify_images=verify_images,
        )  # fmt: skip
    verify_kwargs = dict(num_threads=num_threads, latency_runs=latency_runs)
    start = time.perf_counter()
    if verify_only:
        with tf.io.gfile.GFile(output, "rb") as f:
            content = f.read()
        report = verify_tflite(content, model, data.verification, data.labels, **verify_kwargs)
    elif quantize == "int8":
        content, report = int8_with_fallback(
            model, data, int8_io=int8_io, fallback=int8_fallback, min_agreement=min_agreement,
            max_float_fraction=max_float_fraction, **verify_kwargs,
        )  # fmt: skip
    else:
        content = convert(model, quantize)
        report = verify_tflite(content, model, data.verification, data.labels, **verify_kwargs)
    report = {
        "model": output,
        "saved_model": saved_model,
        "quantization": "verify" if verify_only else quantize,
        "int8_io": int8_io,
        "data": data.source,
        "calibration_images": 0 if verify_only or quantize != "int8" else len(data.calibration),
        "seconds": round(time.perf_counter() - start, 2),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **report,
    }
    if not verify_only:
        write_atomic(output, content, overwrite=overwrite)
    write_atomic(report_path(output), json.dumps(report, indent=2).encode(), overwrite=True)
    return report


def format_report(report: dict[str, Any]) -> str:
    """The report as a two-column text table."""
    rows = [
        ("model", report["model"]),
        ("quantization", report["quantization"] + (" (uint8 I/O)" if report["int8_io"] else "")),
        ("size", f"{report['size_bytes'] / 1024:.1f} KiB"),
        ("verification images", f"{report['images']} ({report['data']})"),
        ("top-1 agreement", f"{report['top1_agreement']:.4f}"),
        ("max |logit diff|", f"{report['max_abs_logit_diff']:.3g} "
                             f"({report['relative_logit_diff']:.3g} of the logit scale)"),
        ("latency (batch 1)", f"{report['latency_ms']:.3f} ms median, "
                              f"{report['num_threads']} thread(s)"),
        ("input", f"{report['input']['dtype']} {report['input']['shape']} "
                  f"scale/zero point {report['input']['quantization']}"),
        ("ops", f"{report['num_ops']} ({report['num_float_ops']} float), no Flex op"),
    ]  # fmt: skip
    if "top1_accuracy_tflite" in report:
        acc = (report["top1_accuracy_tflite"], report["top1_accuracy_saved_model"])
        rows.append(("top-1 accuracy", f"{acc[0]:.4f} tflite, {acc[1]:.4f} SavedModel"))
    fb = report.get("fallback")
    if fb:
        rows.append(("int8 agreement before fallback", f"{fb['int8_top1_agreement']:.4f}"))
        if fb["float_nodes"]:
            kept = [f"{n['op']} {n['node'].split(';')[0]}" for n in fb["float_nodes"]]
            rows.append(("ops kept in float", ", ".join(kept)))
            cost = f"size x{fb['size_cost']:.3f}, latency x{fb['latency_cost']:.3f}"
            rows.append(("fallback cost", cost + " vs plain int8"))
        rows.append(("meets --min_agreement", str(fb["meets_min_agreement"])))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
