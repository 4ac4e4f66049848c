"""A tiny real TFDS builder with registered source-file checksums, for `tfsd.data.prepare` tests.

`write_tiny_builder(folder)` and `write_source(folder)` write:

* ``tfsd_tiny_files.py``: a ``tfds.core.GeneratorBasedBuilder`` (``tfsd_tiny_files``) whose
  ``_split_generators`` calls ``dl_manager.download`` on one URL, exactly as TFDS's own builders
  do (e.g. ``image_classification/mnist.py``), and decodes 8 × 8 greyscale images and labels;
* ``checksums.tsv`` next to it: TFDS reads a builder's registered checksums from the file of that
  name beside its code (``DatasetBuilder._checksums_path``), in TFDS's own format;
* ``tiny-images.bin`` in a source folder: the file whose checksum is registered
  (``upstream=True``) or the same records with other bytes (``upstream=False``: a trailing pad
  byte the decoder ignores, like a recompressed ``.gz`` whose decoded bytes are the same).

Import the module (``sys.path``) to register the builder; a process registers it once.
"""

import hashlib
from pathlib import Path

import numpy as np

URL = "https://example.invalid/tiny-images.bin"
NUM = {"train": 40, "test": 20}  # examples per split; labels cycle through 0..3
CLASSES = 4

BUILDER = '''
import numpy as np
import tensorflow_datasets as tfds

NUM = {num!r}


class TfsdTinyFiles(tfds.core.GeneratorBasedBuilder):
    """40 + 20 greyscale 8 x 8 images of 4 classes, from one registered source file."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({{
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(num_classes={classes}),
            }}),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        path = dl_manager.download({url!r})
        raw = np.frombuffer(path.read_bytes(), np.uint8)
        return {{"train": self._generate_examples(raw, 0, NUM["train"]),
                 "test": self._generate_examples(raw, NUM["train"], NUM["test"])}}

    def _generate_examples(self, raw, start, count):
        # Record i: 64 pixels, then its label byte.
        for i in range(start, start + count):
            rec = raw[65 * i : 65 * (i + 1)]
            yield i, {{"image": rec[:64].reshape(8, 8, 1), "label": int(rec[64])}}
'''


def content(skewed: bool = False) -> bytes:
    """The source file's records; ``skewed``: every label 0 (valid, not the expected counts)."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(sum(NUM.values())):
        label = 0 if skewed else i % CLASSES
        records.append(rng.integers(0, 256, 64, dtype=np.uint8).tobytes() + bytes([label]))
    return b"".join(records)


def write_tiny_builder(folder: Path) -> None:
    """Writes the builder module and its registered ``checksums.tsv`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    registered = content()
    (folder / "tfsd_tiny_files.py").write_text(BUILDER.format(num=NUM, classes=CLASSES, url=URL))
    digest = hashlib.sha256(registered).hexdigest()
    (folder / "checksums.tsv").write_text(f"{URL}\t{len(registered)}\t{digest}\ttiny-images.bin\n")


def write_source(folder: Path, *, upstream: bool = True, skewed: bool = False) -> Path:
    """A source folder holding ``tiny-images.bin``: the registered bytes, or other bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    data = content(skewed)
    if not upstream:
        data += b"\0"  # ignored by the decoder: same records, another sha256
    (folder / "tiny-images.bin").write_bytes(data)
    return folder
