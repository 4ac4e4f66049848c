"""Evaluating a run on a split: accuracy, loss, per-class accuracy, the confusion matrix.

The library of ``tfsd.evaluate`` (``docs/evaluate_predict_plot.md``). Each batch goes through
`tfsd.training.step.eval_batch`, the computation the training loop evaluates with.
"""

from __future__ import annotations

import json
import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tfsd import data as data_lib
from tfsd import figures
from tfsd.training import run_dir
from tfsd.training import step as step_lib

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

    @tf.function
    def step(images, labels):
        return step_lib.eval_batch(model, images, labels, num_classes)

    matrix = np.zeros((num_classes, num_classes), np.int64)
    sums = {"loss": 0.0, "top1": 0.0, "top5": 0.0}
    for images, labels in dataset:
        if labels.shape.rank != 1:
            raise ValueError("evaluate needs integer labels (MixUp/CutMix apply to train only).")
        out, predicted = step(images, labels)
        matrix += confusion_matrix(labels.numpy(), predicted.numpy(), num_classes)
        for key in sums:
            sums[key] += float(out[key])
    examples = int(matrix.sum())
    if examples == 0:
        raise ValueError("The eval split is empty: nothing to evaluate.")
    per_class = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(per_class > 0, np.diag(matrix) / per_class, np.nan)
    return {
        "top1": sums["top1"] / examples,
        "top5": sums["top5"] / examples,
        "loss": sums["loss"] / examples,
        "examples": examples,
        "per_class_accuracy": [float(a) for a in accuracy],
        "confusion_matrix": matrix,
    }


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: list[str], path: str, title: str = ""
) -> None:
    """Writes ``matrix`` as a PNG: colours are row-normalised (each true class sums to 1)."""
    n = matrix.shape[0]
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = matrix / np.maximum(rows, 1)
    side = min(4.0 + 0.35 * n, 16.0)
    fig = figures.new_figure(side + 1.5, side)
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
    figures.save_png(fig, path)


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
      weights: "ema", "raw" or None (EMA when the run kept it), as `tfsd.run_dir.restore_run`.
      data_dir: TFDS data directory.
      split: a TFDS split expression replacing the run's eval split; None or "eval": the run's.
      batch_size: eval batch size.
      output_dir: where the JSON and PNG go; default ``model_dir/evaluation/<ckpt>-<weights>``.

    Returns:
      The metrics of `evaluate_model` (the matrix as nested lists) plus ``checkpoint``,
      ``weights``, ``class_names``, ``split`` and the written ``json`` / ``png`` paths.

    Raises:
      tfsd.training.run_dir.RunDirError: no run, no checkpoint, a checkpoint of another model.
      ValueError: a split the run's data source does not have, an empty split.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    model, config, info, path = run_dir.restore_run(
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
