"""The run directory (`tfsd.training.run_dir`): the config.json check and clear errors for a
corrupt or foreign checkpoint, as the loop meets them on resume."""

import json
import shutil

import pytest

from tests.helpers import tiny_config
from tfsd.training import loop as loop_lib
from tfsd.training import run_dir


def test_resume_with_different_config_fails_with_diff(tmp_path):
    c = tiny_config()
    run_dir.check_or_write_config(c, str(tmp_path))
    c.total_steps = 99  # run-length fields may change
    c.eval_every_steps = 7
    run_dir.check_or_write_config(c, str(tmp_path))
    c.lr.base = 0.5
    c.model.survival_prob = 0.9
    with pytest.raises(run_dir.CheckpointError, match=r"lr\.base.*\n.*model\.survival_prob"):
        run_dir.check_or_write_config(c, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lr"]["base"] != 0.5  # the saved config was not overwritten


def _copy_of(tiny_run, tmp_path):
    """A writable copy of the session's finished 12-step run (conftest `tiny_run`)."""
    model_dir = tmp_path / "run"
    shutil.copytree(tiny_run.model_dir, model_dir)
    return model_dir


def test_corrupt_checkpoint_gives_clear_error_and_deletes_nothing(tiny_run, tmp_path):
    model_dir = _copy_of(tiny_run, tmp_path)
    ckpt_dir = model_dir / "checkpoints"
    data_file = next(ckpt_dir.glob("ckpt-12.data-*"))  # the latest of tiny_run (6 and 12)
    data_file.write_bytes(b"garbage" * 10)
    files = sorted(p.name for p in ckpt_dir.iterdir())
    config = run_dir.load_run_config(str(model_dir))
    config.total_steps = 16  # a longer run resumes (a run-length field may change)
    with pytest.raises(run_dir.CheckpointError, match="Nothing was deleted"):
        loop_lib.train_and_evaluate(config, str(model_dir))
    assert sorted(p.name for p in ckpt_dir.iterdir()) == files


def test_incompatible_checkpoint_gives_clear_error(tiny_run, tmp_path):
    model_dir = _copy_of(tiny_run, tmp_path)
    (model_dir / "config.json").unlink()  # pretend the directory came from elsewhere
    config = run_dir.load_run_config(str(tiny_run.model_dir))
    config.model.overrides.width = 0.5  # tiny_run's test_resnet is width 0.25
    with pytest.raises(run_dir.CheckpointError, match="different model"):
        loop_lib.train_and_evaluate(config, str(model_dir))
