"""Train and evaluate: ``python -m tfsd.train --config=NAME[:ARG] --model_dir=DIR``.

The command only parses flags; the loop is `tfsd.training.loop.train_and_evaluate`. Overrides come
from the command line as ``--config.lr.base=0.05`` (an unknown key fails at once with a close
match). See ``docs/training.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from absl import app, flags

from tfsd import cli, config_lib
from tfsd.training import loop, run_dir


def _define_flags(fv: flags.FlagValues) -> None:
    del fv  # --config, --model_dir and --data_dir are all the command takes (tfsd.cli).


COMMAND = cli.Command(
    "tfsd.train",
    _define_flags,
    config=True,
    model_dir_help="Checkpoints, logs and the resolved config (local or gs://).",
)


def main(argv: list[str]) -> None:
    del argv
    v = COMMAND.values()
    if v["config"] is None or not v["model_dir"]:
        raise app.UsageError("--config and --model_dir are required.")
    try:
        result = loop.train_and_evaluate(v["config"], v["model_dir"], v["data_dir"])
    except (run_dir.RunDirError, config_lib.ConfigError) as e:
        # A run directory that cannot be resumed, or a config refused before anything was
        # written: one line, no traceback.
        COMMAND.fail(e)
    print(json.dumps({"final_eval": result}))


def run_main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m tfsd.train`` and the ``tfsd-train`` console script."""
    COMMAND.run(main, argv)


if __name__ == "__main__":
    run_main()
