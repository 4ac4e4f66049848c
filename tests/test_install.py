"""The installed package (a wheel, not the source tree) trains with ``--config=NAME``."""

import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests import tfds_fixtures

REPO = Path(__file__).resolve().parents[1]

# One fresh process of the installed package (each start imports TensorFlow, seconds): where
# tfsd and its configs are imported from, the requirements it declares, then the tfsd.prepare
# command on tests/tfds_fixtures.py's builder (argv[1]: its folder, put on sys.path only after
# tfsd was found, so that tfsd is looked up as it was without it).
_INSTALLED_CHILD = """
import importlib.metadata, json, sys
import tfsd, tfsd.config_names as t
print(json.dumps({"tfsd": tfsd.__file__, "configs": str(t.CONFIG_DIR),
                  "requires": str(importlib.metadata.requires("tfsd"))}), flush=True)
sys.path.insert(0, sys.argv.pop(1))
import tfsd_tiny_files, tfsd.prepare as p
p.run_main(sys.argv)
"""


@pytest.mark.e2e  # a wheel installed into a fresh virtualenv, its console scripts run
def test_wheel_installs_outside_the_tree_and_trains_a_named_config(tmp_path):
    """Builds a wheel, installs it into a fresh virtualenv, runs ``tfsd-train`` elsewhere.

    Caught: ``configs/`` was found relative to the source tree, so an installed ``tfsd-train``
    could not resolve ``--config=cifar10_resnet110``. No network here, so the new virtualenv
    sees the dependencies through a ``.pth`` line naming this interpreter's site-packages (a
    plain path: the ``.pth`` files there, such as an editable tfsd, are not processed).
    """
    # Build from a copy: an in-tree build would leave build/ and *.egg-info in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "BUILD")
    for name in ("tfsd", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    dist = tmp_path / "dist"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), "."],
        cwd=src, check=True,
    )  # fmt: skip
    (wheel,) = dist.glob("tfsd-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    deps = [p for p in site.getsitepackages() if os.path.isdir(p)]
    Path(purelib, "tfsd_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", str(wheel)], check=True)

    scripts = (
        "tfsd-train",
        "tfsd-export",
        "tfsd-tflite",
        "tfsd-evaluate",
        "tfsd-predict",
        "tfsd-plot",
        "tfsd-prepare",
    )
    for script in scripts:
        assert (venv / "bin" / script).is_file(), script

    work = tmp_path / "elsewhere"  # neither the checkout nor the virtualenv
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="3")
    run = subprocess.run(
        [
            str(venv / "bin" / "tfsd-train"),
            "--config=cifar10_resnet110:runlocal",
            f"--model_dir={work / 'run'}",
            "--config.model.name=test_resnet",  # registered tiny model
            "--config.model.overrides.width=0.25",
            "--config.model.image_size=16",
            "--config.data.synthetic_train_size=64",
            "--config.data.synthetic_eval_size=16",
            "--config.batch_size=16",
            "--config.total_steps=3",
        ],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    final = json.loads(run.stdout.strip().splitlines()[-1])["final_eval"]
    assert final["step"] == 3 and final["examples"] == 16
    assert (work / "run" / "checkpoints" / "checkpoint").is_file()
    # A second console script of the wheel, on the run (tests/test_export.py runs the command
    # in-process).
    export = subprocess.run(
        [str(venv / "bin" / "tfsd-export"), f"--model_dir={work / 'run'}",
         f"--export_dir={work / 'exports'}", "--fold=false"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert export.returncode == 0, export.stderr[-3000:]
    assert json.loads(export.stdout.strip().splitlines()[-1]) == {
        "exported": str(work / "exports" / "1"), "export_base": str(work / "exports"),
    }  # fmt: skip

    # TFDS preparation works from the install alone (issue 19, defect 12): TFDS's
    # dataset_builder imports importlib_resources for download_and_prepare but declares it only
    # for Python < 3.9, so tfsd must. The installed tfsd declares it, and its tfsd.prepare command
    # prepares a small dataset (tests/tfds_fixtures.py's builder) from local files, offline.
    tiny = work / "tiny"
    tfds_fixtures.write_tiny_builder(tiny)
    source = tfds_fixtures.write_source(tiny / "src", upstream=False)
    prep = subprocess.run(
        [str(python), "-c", _INSTALLED_CHILD, str(tiny),
         "--dataset=tfsd_tiny_files", f"--source_dir={source}", f"--data_dir={work / 'tfds'}",
         "--accept_checksums"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert prep.returncode == 0, prep.stderr[-3000:]
    installed = json.loads(prep.stdout.splitlines()[0])
    where = [installed["tfsd"], installed["configs"]]
    assert Path(where[0]).is_relative_to(purelib), where
    assert Path(where[1]) == Path(purelib, "tfsd", "configs"), where
    requires = installed["requires"]
    assert "importlib-resources" in requires.replace("_", "-"), requires  # normalised name
    record = json.loads(prep.stdout.strip().splitlines()[-1])
    assert record["splits"]["train"]["num_examples"] == tfds_fixtures.NUM["train"]
    assert (work / "tfds" / "tfsd_tiny_files" / "1.0.0" / "dataset_info.json").is_file()
