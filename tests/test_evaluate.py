"""The ``tfsd.evaluate`` command, in-process (tests.helpers.run_cli), on the shared `tiny_run`.

The library behind it: tests/test_evaluation.py.
"""

import json

from tests.helpers import run_cli
from tfsd import evaluate as evaluate_cmd


def test_evaluate_command_prints_the_report_and_refuses_a_missing_run(tiny_run, tmp_path):
    # --output_dir: the default (inside the run directory) would write into the shared run.
    code, out, err = run_cli(
        evaluate_cmd, f"--model_dir={tiny_run.model_dir}", "--weights=raw",
        f"--output_dir={tmp_path / 'ev'}",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])["evaluation"]
    assert summary["examples"] > 0 and "per-class accuracy" in out
    assert (tmp_path / "ev" / "confusion_matrix.png").is_file()
    code, out, err = run_cli(evaluate_cmd, f"--model_dir={tmp_path / 'none'}")
    assert code != 0 and "does not exist" in err
