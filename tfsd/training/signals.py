"""SIGTERM / SIGINT during training: stop within one step, save, exit (preemption)."""

from __future__ import annotations

import os
import signal
import threading

import tensorflow as tf


class StopOnSignal:
    """SIGTERM / SIGINT set ``flag``, which the running train loop reads before every step.

    A Python signal handler runs only when the main thread returns to the interpreter, i.e.
    after the whole host loop (``steps_per_loop`` steps, minutes on a TPU). The C-level handler
    however writes the signal number to the wake-up fd at once (``signal.set_wakeup_fd``); a
    watcher thread reads it and sets the variable, so the loop stops within one step.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, flag: tf.Variable):
        self.flag, self.received = flag, []
        self._read, self._write = os.pipe()
        os.set_blocking(self._write, False)
        self._previous_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        self._thread = threading.Thread(target=self._watch, name="tfsd-signals", daemon=True)
        self._thread.start()

    def _handle(self, signum, _frame):  # the Python-level handler: records, never raises
        if signum not in self.received:
            self.received.append(signum)

    def _watch(self) -> None:
        while True:
            data = os.read(self._read, 64)
            if not data:
                return
            signums = [b for b in data if b in self.SIGNALS]
            if signums:
                self.received.extend(s for s in signums if s not in self.received)
                self.flag.assign(True)

    def close(self) -> None:
        signal.set_wakeup_fd(self._previous_fd)
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        os.close(self._write)  # ends the watcher's read
        self._thread.join(timeout=5)
        os.close(self._read)
