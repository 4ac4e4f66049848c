"""Test error of stochastic depth vs constant depth on Fashion-MNIST: seeds, spread, time, depth.

What is measured. For each seed, two runs of the same config (``configs/fashion_mnist.py``,
the stochastic-depth paper's CIFAR recipe: SGD Nesterov 0.9, lr 0.1 ÷10 at 50% and 75% of the
schedule, weight decay 1e-4, pad + crop + flip at 28 px) that differ only in
``model.survival_prob``: ``--survival`` (default 0.5, the paper's linear decay to p_L = 0.5,
batch-wise gates with compute skipping) against 1.0 (constant depth: every block always runs).
The schedule is the paper's scaled to the budget: ``--steps`` steps of ``--batch`` examples (the
lr boundaries stay at 50% / 75% of them; lr 0.1 × batch / 128, linear scaling from the paper's
batch 128) or, with ``--full``, the paper's 500 epochs. Budgets under a few hundred steps are
dominated by BatchNorm's moving averages (momentum 0.99: after n steps they hold 1 − 0.99ⁿ of
the trained statistics); 60 steps left ResNet-56 at chance (89% test error) in eval mode. Each
run is ``tfsd.training.loop.train_and_evaluate`` in this process, evaluated on the whole
10,000-image test split. The two arms alternate within each seed, so background load hits both
alike.

Reported per arm: test error (1 − top-1) mean ± sample standard deviation over the seeds and
each seed's value; training wall time per run (train + final eval); the realised effective depth
(the mean number of residual blocks run per training step, from the runs' ``active_blocks``
summaries, against its expectation sum(p_l) and the block count L).

Usage (from the repository root; the data is prepared offline on first use, see docs/data.md)::

    python benchmarks/accuracy.py                          # ResNet-56, 3 seeds, 150 × 32
    python benchmarks/accuracy.py --model resnet110 --seeds 5 --steps 2000 --device gpu \\
        --precision bfloat16                                # an accelerator, mixed precision
    python benchmarks/accuracy.py --full --device gpu       # the paper's 500-epoch schedule

``--device cpu`` hides every GPU before TensorFlow starts; ``gpu`` requires one. JSON (every
run's numbers and the configuration) goes to ``--output`` (default
``benchmarks/results/accuracy.json``), the table to stdout. Context, not a claim: the paper's
CIFAR-10 ResNet-110 goes from 6.41% (constant depth) to 5.25% (stochastic depth) test error
after 500 epochs; short budgets need not show that (stochastic depth regularises and pays off
late in training).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet56", choices=("resnet20", "resnet56", "resnet110"))
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=150, help="training steps per run (budget)")
    p.add_argument("--full", action="store_true", help="the paper's 500 epochs (ignores --steps)")
    p.add_argument("--batch", type=int, default=None, help="default 32; 128 with --full")
    p.add_argument("--survival", type=float, default=0.5, help="p_L of the stochastic arm")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu"))
    p.add_argument("--precision", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--jit_compile", action="store_true")
    p.add_argument("--eval_steps", type=int, default=0, help="0: the whole test split")
    p.add_argument("--data_dir", default=None, help="TFDS data directory")
    p.add_argument("--work_dir", default=None, help="run directories (default: a temp dir)")
    p.add_argument("--table_from", default=None, help="print the table of a saved JSON; no runs")
    p.add_argument("--output", default=os.path.join(ROOT, "benchmarks/results/accuracy.json"))
    args = p.parse_args(argv)
    if args.batch is None:
        args.batch = 128 if args.full else 32
    if args.seeds < 1 or args.steps < 1 or args.batch < 1 or not 0 < args.survival <= 1:
        p.error("--seeds, --steps and --batch must be >= 1 and --survival in (0, 1]")
    return args


def _config(args, seed: int, survival: float):
    from tfsd import config_names

    c = config_names.load_config(f"fashion_mnist_{args.model}")
    c.seed = seed
    c.model.survival_prob = survival
    c.batch_size = args.batch
    c.lr.base = 0.1 * args.batch / 128  # the paper's 0.1 at batch 128, scaled linearly
    c.precision = args.precision
    c.jit_compile = args.jit_compile
    c.data.cache = True  # 30 MB of encoded images
    c.eval_steps = args.eval_steps
    if not args.full:
        c.num_epochs = args.steps * args.batch / 60_000  # lr boundaries at 50% / 75% of it
        c.steps_per_loop = max(1, min(50, args.steps // 4))
        c.checkpoint_every_steps = args.steps
    return c


def _blocks(model: str) -> int:
    """Residual blocks L of CIFAR ResNet-d (d = 6n + 2, 3n blocks): 27 for ResNet-56."""
    return (int(model.removeprefix("resnet")) - 2) // 2


def _effective_depth(model_dir: str, model: str) -> tuple[float, int]:
    """Mean ``active_blocks`` per step over the run (step-weighted) and the block count L.

    At survival 1.0 the model has no stochastic-depth layers (plain residual adds) and logs
    ``active_blocks`` 0: every one of its L blocks runs every step.
    """
    from tfsd.training import plots

    train = plots.read_scalars(os.path.join(model_dir, "train"))
    if not train.get("stochastic_blocks", ([], [0]))[1][-1]:
        return float(_blocks(model)), _blocks(model)
    steps, active = train["active_blocks"]
    spans = [int(steps[0])] + [int(b - a) for a, b in zip(steps[:-1], steps[1:])]
    blocks = int(train["stochastic_blocks"][1][-1])
    return float(sum(a * s for a, s in zip(active, spans)) / sum(spans)), blocks


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(runs: list[dict], arms) -> list[dict]:
    """Per arm: test error mean ± sd over seeds, per-seed errors, time, realised depth."""
    rows = []
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        err, err_sd = _mean_sd([r["test_error"] for r in mine])
        sec, sec_sd = _mean_sd([r["seconds"] for r in mine])
        rows.append(
            {
                "arm": arm,
                "test_error_mean": err,
                "test_error_sd": err_sd,
                "per_seed": [r["test_error"] for r in mine],
                "seconds_mean": sec,
                "seconds_sd": sec_sd,
                "active_blocks": statistics.fmean(r["active_blocks"] for r in mine),
                "expected_active_blocks": mine[0]["expected_active_blocks"],
                "blocks": mine[0]["blocks"],
            }
        )
    return rows


def print_table(report: dict) -> None:
    """The Markdown table of a report (``--table_from`` re-prints a saved one)."""
    a = report["args"]
    budget = "500 epochs" if a["full"] else f"{a['steps']} steps × batch {a['batch']}"
    print(f"\nFashion-MNIST, {a['model']}, {budget}, {a['seeds']} seeds, {a['precision']}")
    print(
        "| arm | test error (mean ± sd) | per seed (%) | s / run | active blocks (expected) / L |"
    )
    print("|---|---:|---|---:|---:|")
    for r in report["rows"]:
        seeds = " / ".join(f"{100 * e:.2f}" for e in r["per_seed"])
        print(
            f"| {r['arm']} | {100 * r['test_error_mean']:.2f}% ± {100 * r['test_error_sd']:.2f} "
            f"| {seeds} | {r['seconds_mean']:.0f} ± {r['seconds_sd']:.0f} "
            f"| {r['active_blocks']:.2f} ({r['expected_active_blocks']:.2f}) / {r['blocks']} |"
        )


def main(argv=None) -> dict:
    args = _parse(argv)
    if args.table_from:
        with open(args.table_from) as f:
            report = json.load(f)
        print_table(report)
        return report
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"  # before TensorFlow starts
    sys.path.insert(0, ROOT)
    import tensorflow as tf

    from tfsd import schedules
    from tfsd.training import loop

    if args.device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise SystemExit("--device gpu: TensorFlow sees no GPU.")
    work = args.work_dir or tempfile.mkdtemp(prefix="tfsd-accuracy-")
    load_before = os.getloadavg()
    arms = {"stochastic depth": args.survival, "constant depth": 1.0}
    runs = []
    for seed in range(args.seeds):
        # Alternate the arm that goes first, so a drift in background load favours neither.
        order = list(arms.items()) if seed % 2 == 0 else list(arms.items())[::-1]
        for arm, survival in order:
            model_dir = os.path.join(work, f"{arm.split()[0]}-seed{seed}")
            config = _config(args, seed, survival)
            t0 = time.time()
            result = loop.train_and_evaluate(config, model_dir, args.data_dir)
            seconds = time.time() - t0
            active, blocks = _effective_depth(model_dir, args.model)
            expected = sum(schedules.linear_rule(blocks, survival))  # the recipe's rule
            runs.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "survival_prob": survival,
                    "test_error": 1.0 - float(result["top1"]),
                    "test_examples": int(result["examples"]),
                    "steps": int(result["step"]),
                    "seconds": round(seconds, 1),
                    "active_blocks": round(active, 3),
                    "expected_active_blocks": round(expected, 3),
                    "blocks": blocks,
                    "model_dir": model_dir,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    rows = summarize(runs, arms)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "tensorflow": tf.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        },
        "rows": rows,
        "runs": runs,
    }
    print_table(report)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(f"JSON: {args.output}")
    return report


if __name__ == "__main__":
    main()
