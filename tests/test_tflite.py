"""tfsd.tflite, the command: int8 with uint8 I/O, then --verify of the written file.

In-process (`run_cli`), on the trained tiny ResNet of tests/tflite_fixtures.py; its eval images
come from the named config, as a user without the run directory would give them.
"""

import json

import pytest

from tests import tflite_fixtures as fixtures
from tests.helpers import run_cli
from tfsd import tflite as tflite_cmd
from tfsd.serving import tflite_export


@pytest.mark.slow
def test_cli_int8_uint8_io_then_verify(tmp_path_factory, tmp_path):
    model = fixtures.serving(tmp_path_factory, "resnet")
    out = tmp_path / "resnet.tflite"
    code, stdout, err = run_cli(
        tflite_cmd, f"--saved_model={model.path}", f"--output={out}", "--quantize=int8",
        "--int8_io", "--representative_config=cifar10_resnet110:runlocal",
        "--calibration_steps=50", "--verify_images=100",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "top-1 agreement" in stdout and "no Flex op" in stdout
    report = json.loads((tmp_path / "resnet.tflite.json").read_text())
    assert report["quantization"] == "int8" and report["int8_io"] is True
    assert report["calibration_images"] == 50 and report["images"] == 100
    assert report["input"]["dtype"] == "uint8" and report["input"]["quantization"] == [1.0, 0.0]
    assert report["top1_agreement"] >= 0.98
    assert report["size_bytes"] == out.stat().st_size
    assert "cifar10_resnet110:runlocal" in report["data"]
    before = out.read_bytes()
    # --verify on the existing file (in process): same agreement, nothing rewritten.
    again = tflite_export.convert_and_verify(
        model.path, str(out), verify_only=True, verify_images=100,
        representative_config="cifar10_resnet110:runlocal", latency_runs=5,
    )  # fmt: skip
    assert again["quantization"] == "verify" and again["size_bytes"] == len(before)
    assert out.read_bytes() == before


def test_int8_with_zero_calibration_steps_says_so(tiny_run, tiny_export, tmp_path):
    """With --model_dir given, the old message asked for --model_dir; now the flag at fault is
    named before any model or data is read."""
    out = tmp_path / "m.tflite"
    code, _, err = run_cli(
        tflite_cmd, f"--saved_model={tiny_export}", f"--output={out}", "--quantize=int8",
        f"--model_dir={tiny_run.model_dir}", "--calibration_steps=0",
    )  # fmt: skip
    assert code != 0
    assert "--calibration_steps eval images; got 0" in err and "pass --model_dir" not in err
    assert not out.exists()
