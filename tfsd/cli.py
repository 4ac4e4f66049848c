"""Plumbing of tfsd's absl commands: flags are defined when a command runs, never at import.

Every command (``tfsd/train.py``, ``export.py``, ``tflite.py``, ``evaluate.py``, ``predict.py``,
``plot.py``) is a leaf: its flags and a ``main`` that calls the library. Flags go into absl's
process-wide ``FLAGS`` only when the command runs, so importing any tfsd module defines none (a
user's own absl program may have its own ``--model_dir``), and a second run in the same process
(tests under ``absl.testing.flagsaver``) redefines the command's flags with their defaults. See
``docs/architecture.md``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

from tfsd import config_names

# Every command reads these two (defined by `Command` itself).
SHARED_FLAGS = {
    "model_dir": "A training run directory (--model_dir of tfsd.train; local or gs://).",
    "data_dir": "TFDS data directory (local or gs://).",
}
CONFIG_HELP = (
    "Config: configs/NAME.py by NAME (or a family variant, efficientnet_b3 → "
    "configs/efficientnet.py:b3), or a path; ':runlocal' selects the mode. Overrides: "
    "--config.FIELD=VALUE."
)


class Command:
    """A command's flags and entry point.

    Args:
      name: the module name used in error messages (``tfsd.export``).
      define: defines the command's own flags into the ``flags.FlagValues`` it is given.
      positional: accept positional arguments (``tfsd.predict`` takes image paths).
      config: the command takes ``--config=NAME[:ARG]`` with ``--config.FIELD=VALUE`` overrides
        (``ml_collections`` config flag; ``NAME`` resolved by `tfsd.config_names`).
      model_dir_help: the help text of ``--model_dir`` when it differs from the shared one.
    """

    def __init__(
        self,
        name: str,
        define: Callable[[flags.FlagValues], None],
        *,
        positional: bool = False,
        config: bool = False,
        model_dir_help: str | None = None,
    ):
        self.name, self._define, self._positional, self._config = name, define, positional, config
        self._help = dict(SHARED_FLAGS)
        if model_dir_help:
            self._help["model_dir"] = model_dir_help
        self.names: list[str] = []

    def values(self) -> dict[str, Any]:
        """The parsed value of every flag the command defined (``config``: the ConfigDict)."""
        return {name: flags.FLAGS[name].value for name in self.names}

    def fail(self, error: Exception | str) -> None:
        """Exits with status 1 and ``<command>: <error>`` on stderr (no traceback)."""
        sys.exit(f"{self.name}: {error}")

    def define_flags(self, argv: Sequence[str]) -> None:
        """(Re)defines the command's flags in ``flags.FLAGS``; ``argv`` names config overrides."""
        probe = flags.FlagValues()  # learn the names first, to replace a previous run's flags
        self._define(probe)
        names = [*probe, *self._help] + (["config"] if self._config else [])
        fv = flags.FLAGS
        for existing in list(fv):
            if existing in names or (self._config and existing.startswith("config.")):
                delattr(fv, existing)
        self._define(fv)
        for name, text in self._help.items():
            flags.DEFINE_string(name, None, text, flag_values=fv)
        if self._config:
            # ml_collections defines the --config.FIELD override flags from this argv (sys_argv=),
            # not from sys.argv (ml_collections/config_flags/config_flags.py, _ConfigFlag).
            config_flags.DEFINE_config_file(
                "config", None, CONFIG_HELP, flag_values=fv, sys_argv=list(argv)
            )
        self.names = names

    def run(self, main: Callable[[list[str]], None], argv: Sequence[str] | None = None) -> None:
        """Defines the flags and runs ``main`` under ``absl.app`` (which exits the process).

        ``argv``: the full command line, program name first (default ``sys.argv``).
        """
        argv = list(sys.argv if argv is None else argv)
        if self._config:
            try:
                argv = config_names.rewrite_config_argv(argv)
            except ValueError as e:
                self.fail(e)
        self.define_flags(argv)

        def checked(args: list[str]) -> None:
            if len(args) > 1 and not self._positional:
                raise app.UsageError(f"Unexpected arguments: {args[1:]}")
            main(args)

        app.run(checked, argv=argv, flags_parser=self._parse)

    def _parse(self, argv: list[str]) -> list[str]:
        """absl's parser, with a bad ``--config.FIELD=VALUE`` override as a one-line error."""
        try:
            return app.parse_flags_with_usage(argv)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            # ml_collections raises these, not absl's flags.Error, for an unknown field or a
            # value of the wrong type (config_dict.py __getattr__/__setattr__); unwrap to its text.
            inner: Any = e.args[0] if e.args else e
            while isinstance(inner, BaseException) and inner.args:
                inner = inner.args[0]
            self.fail(f"bad command line: {inner}")
            raise  # unreachable: fail() exits
