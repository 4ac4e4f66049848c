"""Pictures of a training run or a config: ``python -m tfsd.plot --model_dir=RUN``.

``--model_dir=RUN [--output_dir=DIR]`` writes ``survival_schedule.png``, ``curves.png``,
``effective_depth.png`` and ``keep_rates.png`` (default ``RUN/plots``); ``--config=NAME[:ARG]
--output_dir=DIR`` (overrides as in ``tfsd.train``) draws a config's survival schedule without
training. The command only parses flags; the library is `tfsd.training.plots`. See
``docs/evaluate_predict_plot.md``.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from tfsd import cli
from tfsd.training import plots, run_dir


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string(
        "output_dir", None, "Default: RUN/plots (required with --config).", flag_values=fv
    )


COMMAND = cli.Command("tfsd.plot", _define_flags, config=True)


def main(argv: list[str]) -> None:
    del argv
    v = COMMAND.values()
    model_dir, output_dir, config = v["model_dir"], v["output_dir"], v["config"]
    if bool(model_dir) == (config is not None):
        raise app.UsageError("Pass --model_dir=RUN or --config=NAME (not both).")
    if config is not None and not output_dir:
        raise app.UsageError("--config needs --output_dir.")
    try:
        if config is not None:
            written = plots.plot_config(config, output_dir)
        else:
            written = plots.plot_run(model_dir, output_dir)
    except (run_dir.RunDirError, FileNotFoundError, ValueError) as e:
        COMMAND.fail(e)
    for path, _ in written.values():
        print(path)


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.plot`` and the ``tfsd-plot`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
