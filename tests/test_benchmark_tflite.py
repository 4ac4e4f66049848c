"""benchmarks/tflite.py runs end to end on shrunk models: table and JSON (no timing asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e  # a benchmark smoke run (pytest.ini)
def test_tflite_benchmark_runs_and_writes_json(tmp_path):
    out = tmp_path / "tflite.json"
    proc = subprocess.run(
        # One model keeps CI time down: the script's loop is the same for every model, and
        # tests/test_tflite_convert.py converts and checks B0 and Lite0 themselves.
        [sys.executable, str(REPO / "benchmarks" / "tflite.py"), "--image_size=32",
         "--models=efficientnet_lite0",
         "--num_classes=10", "--width=0.25", "--calibration_steps=4", "--rounds=2",
         "--runs_per_round=2", f"--out={out}"],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["model"], r["quantization"]) for r in rows] == [
        (m, q) for m in ("efficientnet_lite0",) for q in ("none", "float16", "dynamic", "int8")
    ]
    for r in rows:
        assert r["latency_ms"] > 0 and r["flex_ops"] == [] and r["size_bytes"] > 0
        assert f"| {r['model']} | {r['quantization']} |" in proc.stdout
    by = {(r["model"], r["quantization"]): r for r in rows}
    for m in ("efficientnet_lite0",):
        assert by[(m, "none")]["size_vs_float"] == 1.0
        assert by[(m, "none")]["float_ops"] == by[(m, "none")]["ops"]
        assert by[(m, "int8")]["float_ops"] == 0  # full integer
        assert by[(m, "int8")]["size_bytes"] < by[(m, "dynamic")]["size_bytes"] * 1.2
    assert "load before" in proc.stdout and result["load_before"]
