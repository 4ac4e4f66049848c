"""The ``folder:/abs/path`` source: one sub-folder of images per class, split by a stable hash.

The eval split holds the files whose path (relative to the root) hashes below
``folder_eval_fraction``, so adding images never moves existing ones between splits. The
pipeline shuffles indices into the file list and reads each file after the shuffle.
"""

import functools
import hashlib
import os

import ml_collections
import tensorflow as tf
from absl import logging

from tfsd.data import positions
from tfsd.data.config import DatasetInfo, Plan, auto, check_index_source

PREFIX = "folder:"
ENCODED = True  # `load` yields the file's bytes.
# What tf.io.decode_image reads (GIF: first frame). Anything else in a class folder is skipped.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _is_eval_file(relative_path: str, eval_fraction: float) -> bool:
    # sha256, not hash(): Python's string hash is salted per process.
    digest = hashlib.sha256(relative_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < eval_fraction


@functools.lru_cache(maxsize=8)
def _list_folder(
    root: str, eval_fraction: float
) -> tuple[tuple[str, ...], dict[str, tuple[tuple[str, ...], tuple[int, ...]]]]:
    """Lists ``root/<class>/**/<image>`` once per process: class names and files per split."""
    if not tf.io.gfile.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist or is not a directory.")
    classes = tuple(
        sorted(
            d.rstrip("/")
            for d in tf.io.gfile.listdir(root)
            if not d.startswith(".") and tf.io.gfile.isdir(os.path.join(root, d))
        )
    )
    if not classes:
        raise ValueError(
            f"Image folder {root!r} has no class sub-folders; expected {root}/<class>/<image>."
        )
    files: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "eval": ([], [])}
    skipped = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        found = 0
        for dirpath, _, filenames in tf.io.gfile.walk(class_dir):
            for filename in sorted(filenames):
                path = os.path.join(dirpath, filename)
                if filename.startswith("."):
                    continue
                if not filename.lower().endswith(IMAGE_EXTENSIONS):
                    skipped.append(path)
                    continue
                relative = os.path.relpath(path, root).replace(os.sep, "/")
                split = "eval" if _is_eval_file(relative, eval_fraction) else "train"
                files[split][0].append(path)
                files[split][1].append(label)
                found += 1
        if not found:
            raise ValueError(
                f"Class folder {class_dir!r} has no images (looked for {IMAGE_EXTENSIONS})."
            )
    if skipped:
        logging.warning(
            "Image folder %s: skipped %d file(s) that are not %s, e.g. %s",
            root,
            len(skipped),
            IMAGE_EXTENSIONS,
            skipped[:3],
        )
    return classes, {k: (tuple(p), tuple(lab)) for k, (p, lab) in files.items()}


def resolve(c: ml_collections.ConfigDict, data_dir: str | None) -> Plan:
    """The `Plan` of a validated ``folder:`` config; lists the folder (``data_dir`` is unused)."""
    del data_dir
    check_index_source(c, "a folder dataset")
    root = c.name[len(PREFIX) :]
    if not root:
        raise ValueError(f"Folder dataset name needs a path: '{PREFIX}/abs/path'.")
    classes, files = _list_folder(root, float(c.folder_eval_fraction))
    if c.num_classes is not None and c.num_classes != len(classes):
        raise ValueError(
            f"num_classes={c.num_classes} but {root!r} has {len(classes)} class folders."
        )
    for split, (paths, _) in files.items():
        if not paths:
            raise ValueError(
                f"Image folder {root!r}: the {split} split is empty with folder_eval_fraction="
                f"{c.folder_eval_fraction}; add images or change the fraction."
            )
    info = DatasetInfo(
        num_classes=len(classes),
        num_train_examples=len(files["train"][0]),
        num_eval_examples=len(files["eval"][0]),
        train_split="train",
        eval_split="eval",
        native_image_size=None,
        class_names=classes,
    )
    return Plan("folder", info, auto(c.preprocess, "inception"), True, None, files)


def elements(plan: Plan, c: ml_collections.ConfigDict, *, split: str, **kwargs) -> tf.data.Dataset:
    """``(position, path, label)``: the index stream (`positions.index_elements`) of the files."""
    paths, labels = (tf.constant(v) for v in plan.files[split])
    ds = positions.index_elements(plan, c, split=split, **kwargs)
    return ds.map(lambda pos, i: (pos, tf.gather(paths, i), tf.gather(labels, i)))


def load(
    plan: Plan, split: str, image_size: int, path: tf.Tensor, label: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(image_bytes, label)`` of one file (read after the shuffle)."""
    del plan, split, image_size
    return tf.io.read_file(path), label
