"""The ``tfsd.export`` command, in-process (tests.helpers.run_cli).

The library behind it: tests/test_saved_model.py and tests/test_publish.py; the wheel's
``tfsd-export`` console script in a fresh process: tests/test_install.py.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tests.helpers import run_cli
from tfsd import export as export_cmd
from tfsd import train as train_cmd
from tfsd.serving import publish as publish_lib
from tfsd.serving import saved_model as saved_model_lib


def test_cli_train_then_export_twice(tmp_path, monkeypatch):
    run, base = tmp_path / "run", tmp_path / "exports"
    # The registered tiny test_resnet, 2 steps: the commands are what is tested.
    train_flags = [
        "--config=cifar10_resnet110:runlocal", f"--model_dir={run}",
        "--config.model.name=test_resnet", "--config.model.overrides.width=0.25",
        "--config.model.image_size=16", "--config.data.synthetic_train_size=32",
        "--config.data.synthetic_eval_size=16", "--config.batch_size=16",
        "--config.total_steps=2", "--config.steps_per_loop=2",
    ]  # fmt: skip
    # In-process (tfsd.cli defines flags per run); the wheel's console scripts run in
    # tests/test_install.py.
    code, out, err = run_cli(train_cmd, *train_flags)
    assert code == 0, out[-3000:] + err[-3000:]
    # A relative --export_dir: the printed export_base is absolute, as docker compose needs it
    # (a relative bind-mount source would resolve against export/, not the caller's directory).
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(export_cmd, f"--model_dir={run}", "--export_dir=exports")
    assert code == 0, err[-3000:]
    assert json.loads(out.strip().splitlines()[-1]) == {
        "exported": os.path.join("exports", "1"), "export_base": str(base),
    }  # fmt: skip
    code, out, err = run_cli(
        export_cmd, f"--model_dir={run}", f"--export_dir={base}", "--fold=false"
    )
    assert code == 0, err[-3000:]
    assert publish_lib.existing_versions(str(base)) == [1, 2]
    assert sorted(os.listdir(base)) == ["1", "2", "models.config"]
    code, out, err = run_cli(
        export_cmd, f"--model_dir={run}", f"--export_dir={base}", "--version=1"
    )
    assert code != 0 and "Version 1 already exists" in err
    # Both versions answer alike: folding changed nothing but the graph.
    x = tf.random.stateless_uniform([2, 16, 16, 3], seed=[0, 1], maxval=255.0)
    x = tf.constant(np.asarray(x).round(), tf.float32)
    a, b = (
        tf.saved_model.load(str(base / v)).signatures["serving_default"](images=x)["logits"]
        for v in ("1", "2")
    )
    assert saved_model_lib.relative_error(a, b) <= 1e-5


def test_keras_model_needs_preprocess_and_a_run_refuses_it(tmp_path):
    """--keras_model used to default to the ImageNet central crop (a 32-px CIFAR model got its
    central 16 x 16 upscaled, silently); nothing is read or written before the flags are good."""
    base = tmp_path / "base"
    code, _, err = run_cli(
        export_cmd, f"--keras_model={tmp_path / 'm.keras'}", f"--export_dir={base}"
    )
    assert code != 0 and "--keras_model needs --preprocess" in err
    code, _, err = run_cli(
        export_cmd, f"--model_dir={tmp_path}", f"--export_dir={base}", "--preprocess=cifar"
    )
    assert code != 0 and "--preprocess is for --keras_model" in err
    assert not base.exists()
