"""Evaluate a training run: ``python -m tfsd.evaluate --model_dir=RUN [--weights=ema|raw]``.

Restores a checkpoint of a ``tfsd.train`` run (the latest, or ``--checkpoint``; EMA weights when
the run kept them, unless ``--weights=raw``) with `tfsd.export.restore_run`, runs one pass over
the eval split through the run's own eval pipeline (`tfsd.data.build_dataset`, ``split="eval"``:
the same preprocessing training evaluated with), and reports:

* top-1 / top-5 accuracy and the mean cross-entropy (no label smoothing: the plain test loss);
* per-class accuracy (recall: correct / examples of that class), worst classes first;
* the confusion matrix (rows: true class, columns: predicted), written as JSON and as a PNG
  (matplotlib, row-normalised colours, counts printed in cells for up to 20 classes).

Outputs go to ``--output_dir`` (default ``RUN/evaluation/<checkpoint name>-<weights>``).
``--split`` evaluates another TFDS split expression (``test``, ``validation[:10%]``); the
synthetic and folder sources have one fixed eval split and reject any other.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from tfsd import cli, export
from tfsd import data as data_lib

# Cells print their counts up to this many classes; beyond, only the colours are readable.
_ANNOTATE_MAX_CLASSES = 20
# Tick labels (class names) up to this many classes.
_TICKS_MAX_CLASSES = 40


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``[C, C]`` int64 counts: row = true label, column = predicted label."""
    out = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(out, (np.asarray(labels, np.int64), np.asarray(predictions, np.int64)), 1)
    return out


def evaluate_model(
    model: keras.Model, dataset: tf.data.Dataset, num_classes: int
) -> dict[str, Any]:
    """One pass of ``model`` (inference mode) over ``dataset`` of ``(images, int labels)``.

    Returns:
      ``top1``, ``top5``, ``loss`` (mean cross-entropy), ``examples``, ``per_class_accuracy``
      (list, NaN for a class with no eval example) and ``confusion_matrix`` (``[C, C]`` ints).
    """
    k = min(5, num_classes)

    @tf.function
    def step(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        labels = tf.cast(labels, tf.int32)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
        top_k = tf.math.in_top_k(labels, logits, k)
        return tf.argmax(logits, axis=-1, output_type=tf.int32), top_k, tf.reduce_sum(loss)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    in_top_k, loss_sum = 0, 0.0
    for images, labels in dataset:
        if labels.shape.rank != 1:
            raise ValueError("evaluate needs integer labels (MixUp/CutMix apply to train only).")
        predicted, hits, loss = step(images, labels)
        matrix += confusion_matrix(labels.numpy(), predicted.numpy(), num_classes)
        in_top_k += int(np.sum(hits.numpy()))
        loss_sum += float(loss)
    examples = int(matrix.sum())
    if examples == 0:
        raise ValueError("The eval split is empty: nothing to evaluate.")
    per_class = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(per_class > 0, np.diag(matrix) / per_class, np.nan)
    return {
        "top1": float(np.trace(matrix)) / examples,
        "top5": in_top_k / examples,
        "loss": loss_sum / examples,
        "examples": examples,
        "per_class_accuracy": [float(a) for a in accuracy],
        "confusion_matrix": matrix,
    }


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], path: str, title: str = ""
) -> None:
    """Writes ``matrix`` as a PNG: colours are row-normalised (each true class sums to 1)."""
    # The object-oriented API with an explicit Agg canvas: no pyplot global state, no display.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = matrix.shape[0]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = matrix / np.maximum(rows, 1)
    side = min(4.0 + 0.35 * n, 16.0)
    fig = Figure(figsize=(side + 1.5, side))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or f"Confusion matrix ({int(matrix.sum())} examples)")
    if n <= _TICKS_MAX_CLASSES:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
    if n <= _ANNOTATE_MAX_CLASSES:
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    dark = normalised[i, j] > 0.5
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if dark else "black")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def evaluate_run(
    model_dir: str,
    *,
    checkpoint: str | None = None,
    weights: str | None = None,
    data_dir: str | None = None,
    split: str | None = None,
    batch_size: int = 64,
    output_dir: str | None = None,
) -> dict[str, Any]:
    """Evaluates a run's checkpoint on its eval split; writes the confusion matrix JSON and PNG.

    Args:
      model_dir: the run directory (``--model_dir`` of ``tfsd.train``).
      checkpoint: a checkpoint prefix; None takes the latest.
      weights: "ema", "raw" or None (EMA when the run kept it), as `tfsd.export.restore_run`.
      data_dir: TFDS data directory.
      split: a TFDS split expression replacing the run's eval split; None or "eval": the run's.
      batch_size: eval batch size.
      output_dir: where the JSON and PNG go; default ``model_dir/evaluation/<ckpt>-<weights>``.

    Returns:
      The metrics of `evaluate_model` (the matrix as nested lists) plus ``checkpoint``,
      ``weights``, ``class_names``, ``split`` and the written ``json`` / ``png`` paths.

    Raises:
      tfsd.export.ExportError: no run, no checkpoint, a checkpoint of another model.
      ValueError: a split the run's data source does not have, an empty split.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, config, info, path = export.restore_run(
        model_dir, checkpoint=checkpoint, weights=weights, data_dir=data_dir
    )
    has_ema = float(config.get("ema_decay", 0.0) or 0.0) > 0
    used = "raw" if weights == "raw" or not has_ema else "ema"
    data = config.data.copy_and_resolve_references()
    data.eval_drop_remainder = False  # every example counts, whatever the run trained with
    if split not in (None, "eval"):
        data.eval_split = split
        info = data_lib.get_dataset_info(data, data_dir=data_dir)  # raises for a bad split
    size = int(config.model.image_size)
    dataset = data_lib.build_dataset(
        data, split="eval", global_batch_size=batch_size, image_size=size, data_dir=data_dir
    )
    num_classes = int(model.outputs[0].shape[-1])
    result = evaluate_model(model, dataset, num_classes)
    names = list(info.class_names or [])
    if len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]

    name = f"{os.path.basename(path)}-{used}"
    output_dir = output_dir or os.path.join(model_dir, "evaluation", name)
    tf.io.gfile.makedirs(output_dir)
    matrix = result["confusion_matrix"]
    result.update(
        confusion_matrix=matrix.tolist(),
        checkpoint=path,
        weights=used,
        class_names=names,
        split=info.eval_split,
        json=os.path.join(output_dir, "confusion_matrix.json"),
        png=os.path.join(output_dir, "confusion_matrix.png"),
    )
    with tf.io.gfile.GFile(result["json"], "w") as f:
        # NaN (a class without eval examples) is not JSON: written as null.
        clean = dict(result)
        clean["per_class_accuracy"] = [
            None if np.isnan(a) else a for a in result["per_class_accuracy"]
        ]
        json.dump(clean, f, indent=1)
    title = f"{config.model.name}, {name}: top-1 {result['top1']:.3f} ({result['examples']} images)"
    plot_confusion_matrix(matrix, names, result["png"], title)
    return result


def format_report(result: dict[str, Any], max_rows: int = 20) -> str:
    """A plain-text summary: totals, then per-class accuracy, worst first (at most ``max_rows``)."""
    lines = [
        f"checkpoint: {result['checkpoint']} ({result['weights']} weights), "
        f"split {result['split']}, {result['examples']} examples",
        f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  loss {result['loss']:.4f}",
        "per-class accuracy (worst first):",
    ]
    counts = np.asarray(result["confusion_matrix"]).sum(axis=1)
    order = sorted(
        range(len(counts)),
        key=lambda i: (np.nan_to_num(result["per_class_accuracy"][i], nan=2.0), i),
    )
    for i in order[:max_rows]:
        acc = result["per_class_accuracy"][i]
        shown = "   n/a" if np.isnan(acc) else f"{acc:.4f}"
        lines.append(f"  {result['class_names'][i]:<24} {shown}  ({counts[i]} examples)")
    if len(order) > max_rows:
        lines.append(f"  ... {len(order) - max_rows} more classes in {result['json']}")
    lines.append(f"confusion matrix: {result['json']}, {result['png']}")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------
# Command line. Flags are defined when the CLI runs (absl flags are global per process), and
# --model_dir / --data_dir are tfsd.train's own, as in tfsd.export.
# -------------------------------------------------------------------------------------------------


def _define_flags() -> list[str]:
    f = flags
    defined = dict(
        checkpoint=f.DEFINE_string("checkpoint", None, "Checkpoint prefix; default: the latest."),
        weights=f.DEFINE_enum("weights", None, ["ema", "raw"], "Default: EMA if the run has it."),
        split=f.DEFINE_string("split", None, "TFDS split expression; default: the run's eval."),
        batch_size=f.DEFINE_integer("batch_size", 64, "Eval batch size."),
        output_dir=f.DEFINE_string("output_dir", None, "Default: RUN/evaluation/<ckpt>-<w>."),
    )
    return list(defined)


_COMMAND = cli.Command(_define_flags)


def main(argv: list[str]) -> None:
    v = _COMMAND.values()
    if not v["model_dir"]:
        raise app.UsageError("--model_dir is required.")
    try:
        result = evaluate_run(
            v["model_dir"],
            checkpoint=v["checkpoint"],
            weights=v["weights"],
            data_dir=v["data_dir"],
            split=v["split"],
            batch_size=v["batch_size"],
            output_dir=v["output_dir"],
        )
    except (export.ExportError, ValueError, FileNotFoundError) as e:
        sys.exit(f"tfsd.evaluate: {e}")
    print(format_report(result))
    summary = {k: result[k] for k in ("top1", "top5", "loss", "examples", "checkpoint", "json")}
    print(json.dumps({"evaluation": summary}))


def run_main() -> None:
    """Entry point of ``python -m tfsd.evaluate`` and the ``tfsd-evaluate`` console script."""
    _COMMAND.run(main)


if __name__ == "__main__":
    run_main()
