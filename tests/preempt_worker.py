"""``python -m tfsd.train`` that sends itself SIGTERM right after host loop K (deterministic).

Run by tests/test_distribute.py as a worker of a two-worker run. With
``TFSD_TEST_SIGTERM_AFTER_LOOP=K`` the loop's ``train_loop`` is wrapped: after its K-th call
returns (every step of that loop done, its last stop check passed), the process signals itself
and waits until the signal watcher has set the stop flag, before the loop's Python code reads
the result: a preemption landing between two host loops, without timing luck (the review's
reproduction). Without the variable it is plain ``tfsd.train``.
"""

import os
import signal
import time

from tfsd import train
from tfsd.training import step as step_lib

_make_train_loop = step_lib.make_train_loop


def _signalling_train_loop(task, stop=None):
    train_loop = _make_train_loop(task, stop)
    after, calls = int(os.environ["TFSD_TEST_SIGTERM_AFTER_LOOP"]), [0]

    def wrapped(iterator, n):
        out = train_loop(iterator, n)
        calls[0] += 1
        if calls[0] == after:
            _ = [v.numpy() for v in out.values()]  # the loop has finished on the device
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.time() + 30
            while not bool(stop.numpy()) and time.time() < deadline:
                time.sleep(0.01)
            assert bool(stop.numpy()), "the signal watcher never set the stop flag"
        return out

    return wrapped


if __name__ == "__main__":
    if os.environ.get("TFSD_TEST_SIGTERM_AFTER_LOOP"):
        step_lib.make_train_loop = _signalling_train_loop
    train.run_main()
