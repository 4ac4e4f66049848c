"""benchmarks/serving_latency.py runs end to end: table and JSON (no timing is asserted)."""

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.e2e  # a benchmark smoke run (tier of the benchmark smoke tests)
def test_serving_latency_benchmark_runs_and_writes_json(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "serving_latency", REPO / "benchmarks" / "serving_latency.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "serving.json"
    assert (
        bench.main(["--quick", "--rounds=1", "--calls=2", "--batch-sizes=1", f"--output={out}"])
        == 0
    )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    names = [r["variant"] for r in result["rows"]]
    assert names == [
        "ResNet-20 no SD",
        "ResNet-20 tfsd folded",
        "ResNet-20 tfsd unfolded",
        "keras.applications EfficientNetB0 (model.export)",
        "tfsd efficientnet_b0 (tfsd.export, folded)",
    ]
    for row in result["rows"]:
        assert row["n_calls"] == len(row["call_ms"]) == 2 and row["median_ms"] > 0
        assert row["variant"] in printed and row["batch"] == 1
        assert row["pass"] is None  # --quick is measured, not judged
    baselines = [r for r in result["rows"] if r["ratio"] == 1.0]
    assert {r["variant"] for r in baselines} >= {names[0], names[3]}
    assert "not judged" in printed and result["table_markdown"] in printed
    assert result["machine"]["tensorflow"]
