"""Evaluate a training run: ``python -m tfsd.evaluate --model_dir=RUN [--weights=ema|raw]``.

Top-1 / top-5, the plain test loss, per-class accuracy and the confusion matrix (JSON and PNG) of
a run's checkpoint on its eval split (or ``--split``). The command only parses flags; the library
is `tfsd.training.evaluation`. See ``docs/evaluate_predict_plot.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from tfsd import cli
from tfsd.training import evaluation, run_dir


def _define_flags(fv: flags.FlagValues) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("checkpoint", None, "Checkpoint prefix; default: the latest.", **f)
    flags.DEFINE_enum("weights", None, ["ema", "raw"], "Default: EMA if the run has it.", **f)
    flags.DEFINE_string("split", None, "TFDS split expression; default: the run's eval.", **f)
    flags.DEFINE_integer("batch_size", 64, "Eval batch size.", **f)
    flags.DEFINE_string("output_dir", None, "Default: RUN/evaluation/<ckpt>-<w>.", **f)


COMMAND = cli.Command("tfsd.evaluate", _define_flags)


def main(argv: list[str]) -> None:
    del argv
    v = COMMAND.values()
    if not v["model_dir"]:
        raise app.UsageError("--model_dir is required.")
    try:
        result = evaluation.evaluate_run(
            v["model_dir"],
            checkpoint=v["checkpoint"],
            weights=v["weights"],
            data_dir=v["data_dir"],
            split=v["split"],
            batch_size=v["batch_size"],
            output_dir=v["output_dir"],
        )
    except (run_dir.RunDirError, ValueError, FileNotFoundError) as e:
        COMMAND.fail(e)
    print(evaluation.format_report(result))
    summary = {k: result[k] for k in ("top1", "top5", "loss", "examples", "checkpoint", "json")}
    print(json.dumps({"evaluation": summary}))


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.evaluate`` and the ``tfsd-evaluate`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
