"""Shared plumbing of tfsd's absl command lines (export, evaluate, predict, tflite).

absl flags live in one process-wide registry, and ``tfsd.train`` defines ``--model_dir`` and
``--data_dir`` when it is imported. The other commands therefore define their own flags only when
they run (never at import, so importing several tfsd modules never clashes) and reuse train's two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from absl import app, flags


class Command:
    """A command's flags, defined on first run; ``define`` returns the names it reads."""

    def __init__(self, define: Callable[[], list[str]]):
        self._define = define
        self.names: list[str] = []

    def values(self) -> dict[str, Any]:
        """The parsed value of every flag the command reads."""
        return {name: flags.FLAGS[name].value for name in self.names}

    def run(self, main: Callable[[list[str]], None]) -> None:
        """Defines the flags (once) and runs ``main`` under ``absl.app``."""
        if not self.names:
            from tfsd import train  # noqa: F401  (defines --model_dir and --data_dir)

            self.names.extend(self._define())
        app.run(main)
