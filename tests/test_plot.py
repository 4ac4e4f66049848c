"""The ``tfsd.plot`` command, in-process (tests.helpers.run_cli): run mode on the shared
`tiny_run`, config mode, usage errors. The library behind it: tests/test_plots.py."""

from tests.helpers import run_cli
from tfsd import plot as plot_cmd


def test_cli_writes_the_pngs_and_refuses_a_missing_run(tiny_run, tmp_path):
    out = tmp_path / "png"
    code, stdout, err = run_cli(
        plot_cmd, f"--model_dir={tiny_run.model_dir}", f"--output_dir={out}"
    )
    assert code == 0, err[-3000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "curves.png", "effective_depth.png", "keep_rates.png", "survival_schedule.png"
    ]  # fmt: skip
    assert str(out / "curves.png") in stdout
    code, _, err = run_cli(plot_cmd, f"--model_dir={tmp_path / 'nothing'}")
    assert code != 0 and "tfsd.plot:" in err


def test_config_mode_with_an_override_and_both_modes_is_a_usage_error(tmp_path):
    code, stdout, err = run_cli(
        plot_cmd, "--config=efficientnet_b0", "--config.model.survival_prob=0.6",
        f"--output_dir={tmp_path}",
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert str(tmp_path / "survival_schedule_efficientnet_b0.png") in stdout
    code, _, err = run_cli(
        plot_cmd, "--config=efficientnet_b0", f"--model_dir={tmp_path}",
        f"--output_dir={tmp_path}",
    )  # fmt: skip
    assert code != 0 and "not both" in err
