"""Class names for exports of models that have no run: ImageNet's, or a text file's.

ImageNet's 1,000 classes in the standard order (the order of every ImageNet checkpoint: Keras,
torchvision, timm, lukemelas) come from files shipped inside tensorflow-datasets, read as text
(nothing is imported or executed): the synset ids from
``tensorflow_datasets/datasets/imagenet2012/labels.txt`` and the human-readable names from the
``IMAGENET_LABELS_LIST`` literal of ``tensorflow_datasets/datasets/siscore/labels.py`` (the
standard ImageNet class-name list, "tench, Tinca tinca" … "toilet tissue, …"). Keras'
``imagenet_class_index.json`` is downloaded on first use, not shipped, so it is not used.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os

import tensorflow as tf

IMAGENET = "imagenet"  # the --class_names value that selects ImageNet's names


def _tfds_file(*parts: str) -> str:
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("tensorflow-datasets is not installed: no ImageNet class names.")
    return os.path.join(list(spec.submodule_search_locations)[0], *parts)


@functools.cache
def imagenet_synsets() -> tuple[str, ...]:
    """The 1,000 ImageNet synset ids (``n01440764`` …) in class order."""
    with open(_tfds_file("datasets", "imagenet2012", "labels.txt")) as f:
        synsets = tuple(line.strip() for line in f if line.strip())
    if len(synsets) != 1000:
        raise ValueError(f"Expected 1000 ImageNet synsets, found {len(synsets)}.")
    return synsets


@functools.cache
def imagenet_class_names() -> tuple[str, ...]:
    """``"<synset> <names>"`` per ImageNet class, e.g. ``"n02124075 Egyptian cat"``.

    The synset id keeps names unique (ImageNet has two "crane" and two "maillot" classes).
    """
    with open(_tfds_file("datasets", "siscore", "labels.py")) as f:
        tree = ast.parse(f.read())
    names = None
    for node in tree.body:  # the literal assigned to IMAGENET_LABELS_LIST, read without running
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "IMAGENET_LABELS_LIST" for t in node.targets
        ):
            names = ast.literal_eval(node.value)
    synsets = imagenet_synsets()
    if not isinstance(names, list) or len(names) != len(synsets):
        raise ValueError("tensorflow-datasets' IMAGENET_LABELS_LIST is missing or not 1000 long.")
    return tuple(f"{s} {n}" for s, n in zip(synsets, names, strict=True))


def read_class_names(spec: str) -> list[str]:
    """``"imagenet"`` (`imagenet_class_names`) or a text file with one class name per line."""
    if spec == IMAGENET:
        return list(imagenet_class_names())
    if not tf.io.gfile.exists(spec):
        raise FileNotFoundError(f"Class-name file {spec} does not exist (or pass 'imagenet').")
    with tf.io.gfile.GFile(spec) as f:
        return [line.strip() for line in f if line.strip()]
