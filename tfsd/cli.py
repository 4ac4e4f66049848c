"""Shared plumbing of tfsd's absl command lines (export, evaluate, predict, tflite).

absl flags live in one process-wide registry, and ``tfsd.train`` defines ``--model_dir`` and
``--data_dir`` when it is imported. The other commands therefore define their own flags only when
they run (never at import, so importing several tfsd modules never clashes) and reuse train's two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import app, flags

# tfsd.train's flags that every other command reads too.
SHARED_FLAGS = ("model_dir", "data_dir")


class Command:
    """A command's flags, defined on first run; ``define`` returns the names of the flags it
    defines (``SHARED_FLAGS`` are added). Positional arguments are refused unless
    ``positional`` (``tfsd.predict`` takes image paths)."""

    def __init__(self, define: Callable[[], list[str]], positional: bool = False):
        self._define, self._positional = define, positional
        self.names: list[str] = []

    def values(self) -> dict[str, Any]:
        """The parsed value of every flag the command reads."""
        return {name: flags.FLAGS[name].value for name in self.names}

    def run(self, main: Callable[[list[str]], None]) -> None:
        """Defines the flags (once) and runs ``main`` under ``absl.app``."""
        if not self.names:
            from tfsd import train  # noqa: F401  (defines --model_dir and --data_dir)

            self.names.extend([*self._define(), *SHARED_FLAGS])

        def checked(argv: list[str]) -> None:
            if len(argv) > 1 and not self._positional:
                raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
            main(argv)

        app.run(checked)
