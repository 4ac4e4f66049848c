"""The ``tfsd.train`` command, run in-process (`tests.helpers.run_cli`): flags, overrides, usage
errors, a short run and a run-directory error. The loop itself: tests/test_loop.py."""

import json
import shutil

from absl import flags

from tests.helpers import run_cli
from tfsd import train as train_cmd

# Command-line overrides after tests.helpers.tiny_config: cifar10_resnet110:runlocal shrunk to the
# registered test_resnet at 16 px (a 32-example eval split: two batches).
TINY_FLAGS = [
    "--config=cifar10_resnet110:runlocal",
    "--config.model.name=test_resnet",
    "--config.model.image_size=16",
    "--config.data.synthetic_train_size=256",
    "--config.data.synthetic_eval_size=32",
    "--config.batch_size=16",
]


def test_cli_override_typo_fails_with_close_match(tmp_path):
    # In-process: flags are defined when the command runs (tfsd.cli), under flagsaver.
    code, out, err = run_cli(
        train_cmd, "--config=cifar10_resnet110:runlocal", f"--model_dir={tmp_path}",
        "--config.lr.bse=0.5",
    )  # fmt: skip
    assert code != 0
    assert 'Did you mean "base"' in out + err
    code, out, err = run_cli(train_cmd, "--config=cifar10_resnet11", f"--model_dir={tmp_path}")
    assert code != 0 and "cifar10_resnet110" in out + err
    assert list(tmp_path.iterdir()) == []  # nothing written for a bad command line


def test_commands_define_their_flags_only_when_they_run_and_again_in_one_process(tmp_path):
    assert "model_dir" not in flags.FLAGS or flags.FLAGS["model_dir"].value is None
    for _ in range(2):  # a second run in one process redefines the flags (no duplicate error)
        code, _, err = run_cli(train_cmd, f"--model_dir={tmp_path}")
        assert code == 1 and "--config and --model_dir are required" in err
    code, _, err = run_cli(train_cmd, "--config=cifar10_resnet110", "stray")
    assert code == 1 and "Unexpected arguments: ['stray']" in err


def test_short_run_prints_its_final_eval(tmp_path):
    """The command's whole path: flags → config → loop → one JSON line on stdout."""
    code, out, err = run_cli(
        train_cmd, *TINY_FLAGS, f"--model_dir={tmp_path}", "--config.total_steps=2",
        "--config.steps_per_loop=2",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    final = json.loads(out.strip().splitlines()[-1])["final_eval"]
    assert final["step"] == 2 and final["examples"] == 32  # the whole synthetic eval split
    assert json.loads((tmp_path / "config.json").read_text())["model"]["name"] == "test_resnet"


def test_run_dir_error_is_one_line_and_exit_code_1(tiny_run, tmp_path):
    """A resume with a different config is the library's CheckpointError: the command prints it
    as ``tfsd.train: ...`` (no traceback) and exits 1, writing nothing."""
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_run.model_dir, model_dir)  # tiny_run is read-only
    before = (model_dir / "config.json").read_text()
    code, _, err = run_cli(train_cmd, *TINY_FLAGS, f"--model_dir={model_dir}")
    assert code == 1 and err.startswith("tfsd.train: ") and "different config" in err
    assert "Traceback" not in err
    assert (model_dir / "config.json").read_text() == before


def test_a_refused_config_is_one_line_and_leaves_model_dir_unwritten(tmp_path):
    """Caught (issue 19, defect 9): the failed start wrote config.json first, so the corrected
    command then failed with ``CheckpointError ... batch_size: saved 512 → now 16``. Config
    errors print as ``tfsd.train: ...`` (no traceback), exit 1 and write nothing."""
    model_dir = tmp_path / "run"
    code, _, err = run_cli(
        train_cmd, *TINY_FLAGS, f"--model_dir={model_dir}", "--config.batch_size=512"
    )
    assert code == 1 and err.startswith("tfsd.train: batch_size 512 exceeds the 256 training")
    assert "Traceback" not in err and not model_dir.exists()
    code, _, err = run_cli(
        train_cmd, *TINY_FLAGS, f"--model_dir={model_dir}", "--config.eval_every_steps=-5"
    )
    assert code == 1 and "eval_every_steps=-5 must be >= 0" in err and not model_dir.exists()
