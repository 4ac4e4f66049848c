"""Classify image files: ``python -m tfsd.predict --model_dir=RUN|--export_dir=DIR IMAGE...``.

Prints the top-k class names and softmax scores per image, from a run's checkpoint (its own eval
preprocessing) or an exported SavedModel (its ``serving_bytes`` signature; a base path takes the
highest version). The command only parses flags; the library is `tfsd.serving.predict`. See
``docs/evaluate_predict_plot.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from absl import app, flags

from tfsd import cli
from tfsd.serving import predict
from tfsd.training import run_dir


def _define_flags(fv: flags.FlagValues) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("export_dir", None, "An export: BASE/<N> or BASE (highest).", **f)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default: the latest.", **f)
    flags.DEFINE_enum("weights", None, ["ema", "raw"], "Default: EMA if the run has it.", **f)
    flags.DEFINE_integer("top_k", predict.TOP_K, "Classes shown per image.", **f)


COMMAND = cli.Command("tfsd.predict", _define_flags, positional=True)


def main(argv: list[str]) -> None:
    v = COMMAND.values()
    paths = argv[1:]
    if bool(v["model_dir"]) == bool(v["export_dir"]):
        raise app.UsageError("Give exactly one of --model_dir and --export_dir.")
    if not paths:
        raise app.UsageError("Give one or more image files after the flags.")
    try:
        if v["model_dir"]:
            result: Any = predict.predict_run(
                v["model_dir"], paths, checkpoint=v["checkpoint"], weights=v["weights"],
                data_dir=v["data_dir"], top_k=v["top_k"],
            )  # fmt: skip
        else:
            result = predict.predict_export(v["export_dir"], paths, top_k=v["top_k"])
    except (run_dir.RunDirError, predict.PredictError, ValueError, FileNotFoundError) as e:
        COMMAND.fail(e)
    print(predict.format_predictions(paths, result))
    print(json.dumps({"predictions": {p: r for p, r in zip(paths, result)}}))


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.predict`` and the ``tfsd-predict`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
