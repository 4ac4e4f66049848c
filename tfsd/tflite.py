"""TFLite / LiteRT conversion: ``python -m tfsd.tflite --saved_model=BASE/N --output=m.tflite``.

Converts a SavedModel written by ``tfsd.export`` to a verified ``.tflite`` file (``none``,
``float16``, ``dynamic`` or ``int8``, with an automatic float fallback for int8) and writes a JSON
report beside it. The command only parses flags; the library is `tfsd.serving.tflite_export`. See
``docs/tflite.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from tfsd import cli
from tfsd.serving import tflite_export, tflite_fallback, tflite_verify
from tfsd.serving.tflite_convert import QUANTIZATIONS, TFLiteError
from tfsd.training import run_dir


def _define_flags(fv: flags.FlagValues) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("saved_model", None, "SavedModel version dir, BASE/<N>.", **f)
    flags.DEFINE_string("output", None, "The .tflite file (report: OUTPUT.json).", **f)
    flags.DEFINE_enum("quantize", "none", list(QUANTIZATIONS), "Quantization.", **f)
    flags.DEFINE_string(
        "representative_config", None, "Eval images of this config (NAME[:ARG]).", **f
    )
    flags.DEFINE_string(
        "calibration_images", None,
        "A folder of images (any): calibration then verification, for exports without a run.",
        **f,
    )  # fmt: skip
    flags.DEFINE_enum(
        "calibration_preprocess", "inception", ["inception", "cifar", "none"],
        "--calibration_images: the export's preprocessing (tfsd-export --preprocess).", **f,
    )  # fmt: skip
    flags.DEFINE_integer(
        "calibration_steps", tflite_verify.DEFAULT_CALIBRATION_STEPS, "int8 calibration images.",
        **f,
    )  # fmt: skip
    flags.DEFINE_integer(
        "verify_images", tflite_verify.DEFAULT_VERIFY_IMAGES, "Held-out verification images.",
        **f,
    )  # fmt: skip
    flags.DEFINE_bool("int8_io", False, "int8: uint8 input (raw pixels) and outputs.", **f)
    flags.DEFINE_enum(
        "int8_fallback", "none", list(tflite_fallback.FALLBACKS),
        "auto: keep the worst ops in float.", **f,
    )  # fmt: skip
    flags.DEFINE_float(
        "min_agreement", tflite_fallback.DEFAULT_MIN_AGREEMENT, "Target int8 top-1 agreement.",
        **f,
    )  # fmt: skip
    flags.DEFINE_float(
        "max_float_fraction", tflite_fallback.DEFAULT_MAX_FLOAT_FRACTION,
        "Fallback budget (of quantized ops).", **f,
    )  # fmt: skip
    flags.DEFINE_integer("num_threads", 1, "LiteRT threads for the latency.", **f)
    flags.DEFINE_bool("overwrite", False, "Replace an existing --output.", **f)
    flags.DEFINE_bool("verify", False, "Verify the existing --output; convert nothing.", **f)


COMMAND = cli.Command(
    "tfsd.tflite", _define_flags, model_dir_help="A training run: its eval images calibrate."
)


def main(argv: list[str]) -> None:
    del argv
    v = COMMAND.values()
    for required in ("saved_model", "output"):
        if not v[required]:
            raise app.UsageError(f"--{required} is required.")
    if v["quantize"] == "int8" and not v["verify"] and v["calibration_steps"] < 1:
        # Before any data or model is read: with --model_dir given, "pass --model_dir" (the
        # library's message for no data at all) would send the user in a circle.
        raise app.UsageError(
            f"--quantize=int8 calibrates on --calibration_steps eval images; got "
            f"{v['calibration_steps']}: give at least 1 (default "
            f"{tflite_verify.DEFAULT_CALIBRATION_STEPS})."
        )
    try:
        report = tflite_export.convert_and_verify(
            v["saved_model"], v["output"], quantize=v["quantize"], model_dir=v["model_dir"],
            representative_config=v["representative_config"], data_dir=v["data_dir"],
            calibration_images=v["calibration_images"],
            calibration_preprocess=v["calibration_preprocess"],
            calibration_steps=v["calibration_steps"], verify_images=v["verify_images"],
            int8_io=v["int8_io"], int8_fallback=v["int8_fallback"],
            min_agreement=v["min_agreement"], max_float_fraction=v["max_float_fraction"],
            num_threads=v["num_threads"], overwrite=v["overwrite"], verify_only=v["verify"],
        )  # fmt: skip
    except (TFLiteError, run_dir.RunDirError, ValueError, FileNotFoundError) as e:
        COMMAND.fail(e)
    print(tflite_export.format_report(report))
    fb = report.get("fallback")
    if fb and not fb["meets_min_agreement"]:
        print(
            f"WARNING: top-1 agreement {report['top1_agreement']:.4f} is below --min_agreement="
            f"{fb['min_agreement']}"
            + ("" if fb["mode"] == "auto" else "; try --int8_fallback=auto")
        )
    print(
        json.dumps(
            {"tflite": report["model"], "report": tflite_export.report_path(report["model"])}
        )
    )


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.tflite`` and the ``tfsd-tflite`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
