"""Prepares a TFDS dataset offline from a folder of its source files; explicit checksum policy.

TFDS's own builder does the work (``builder.download_and_prepare``), so the result is TFDS's own
on-disk dataset, the same as on a machine that downloaded the files. What this module adds is
what an air-gapped machine needs (read in ``tensorflow_datasets/core/download/
download_manager.py`` and ``core/dataset_builder.py``, TFDS 4.9.10):

* TFDS finds a source file in ``DownloadConfig.manual_dir`` under the file name it registered
  for the URL (``_get_manually_downloaded_path``), hashes it and compares size + sha256 with the
  registered ones (``_register_or_validate_checksums``, raising ``NonMatchingChecksumError``).
  Mirrors repackage files: Debian's ``dataset-fashion-mnist`` ships the four upstream ``.gz``
  files recompressed without the original file name in the gzip header (23 bytes shorter,
  another sha256, the same decompressed bytes). Here a mismatch is, by default, an error naming
  each file, what TFDS registered and what the file is, and how to accept it
  (``accept_checksums=True``, ``tfsd-prepare --accept_checksums``,
  ``--config.data.accept_checksums=true``).
* An accepted file is given to TFDS's download manager as the expected checksum of that run
  only: TFDS's ``register_checksums`` would write into site-packages (``_checksums_path`` is next
  to the builder's code), which tfsd never does. The accepted checksums are recorded next to the
  prepared data instead (``ACCEPTED_FILE``, TFDS's own checksums format), with a JSON record of
  where the files came from and what was validated (``RECORD_FILE``).
* With accepted files (and always for datasets in `EXPECTED`), the decoded content is validated
  before the dataset counts as prepared:
  every split's example count, image shapes against the features, labels in range and, where
  `EXPECTED` holds upstream's published numbers, per-class counts and pixel statistics. Failure
  removes the prepared version directory, so a bad dataset is never left behind.
* Nothing is downloaded: a source file missing from the folder is an error naming it (TFDS's
  manager would otherwise fetch its URL), and TFDS's GCS shortcut is off.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

ACCEPTED_FILE = "tfsd_accepted_checksums.tsv"  # next to dataset_info.json of the version
RECORD_FILE = "tfsd_prepared.json"
ACCEPT_HOW = (
    "accept them with prepare(..., accept_checksums=True), `tfsd-prepare --accept_checksums`, "
    "or in training --config.data.accept_checksums=true"
)


class ChecksumMismatchError(ValueError):
    """A source file differs from the one TFDS registered, and the mismatch was not accepted."""


class ContentError(ValueError):
    """Prepared data whose decoded content is not what the dataset should hold."""


class SplitExpectation(NamedTuple):
    """Published facts about one split, checked when files with other checksums were accepted."""

    num_examples: int
    class_counts: tuple[int, ...] | None  # examples per label, label order
    pixel_mean: float | None  # mean of all pixel values / 255
    pixel_std: float | None  # their standard deviation / 255
    tolerance: float = 5e-4  # on mean and std: they are published to 4 decimals


# Fashion-MNIST: 60,000 train / 10,000 test, 6,000 / 1,000 per class (Xiao et al. 2017,
# arXiv:1708.07747, Sec. 2); train pixel mean 0.2860 and std 0.3530, the normalisation constants
# computed from the upstream files that torchvision users and the Fashion-MNIST benchmarks quote.
EXPECTED: dict[str, dict[str, SplitExpectation]] = {
    "fashion_mnist": {
        "train": SplitExpectation(60_000, (6_000,) * 10, 0.2860, 0.3530),
        "test": SplitExpectation(10_000, (1_000,) * 10, None, None),
    },
}

# Debian packages that install a dataset's source files (README, `tfsd.data.tfds` messages).
DEBIAN_SOURCES = {"fashion_mnist": ("dataset-fashion-mnist", "/usr/share/datasets/fashion-mnist")}


def _registered(builder) -> dict[str, Any]:
    """URL -> ``UrlInfo`` (size, sha256, file name) that TFDS registered for the builder."""
    return dict(builder.url_infos or {})


def check_sources(builder, source_dir: str, accept_checksums: bool) -> dict[str, Any]:
    """The accepted ``UrlInfo`` of mismatching files; raises before anything is written.

    Raises:
        FileNotFoundError: ``source_dir`` or a registered file in it is missing.
        ChecksumMismatchError: a file differs from TFDS's registered checksum and
            ``accept_checksums`` is False; the message names every such file.
    """
    if not os.path.isdir(source_dir):
        raise FileNotFoundError(f"Source folder {source_dir!r} does not exist.")
    registered = _registered(builder)
    missing = [
        info.filename
        for info in registered.values()
        if not os.path.isfile(os.path.join(source_dir, info.filename))
    ]
    if missing:
        raise FileNotFoundError(
            f"{builder.name}: source file(s) {sorted(missing)} missing from {source_dir!r} "
            f"(TFDS registers {sorted(i.filename for i in registered.values())}); tfsd never "
            "downloads them."
        )
    accepted, lines = {}, []
    for url, expected in sorted(registered.items()):
        path = os.path.join(source_dir, expected.filename)
        got = tfds.download.checksums.compute_url_info(path)
        if got != expected:  # UrlInfo equality: size and sha256 (not the file name)
            accepted[url] = tfds.download.checksums.UrlInfo(
                size=got.size, checksum=got.checksum, filename=expected.filename
            )
            lines.append(
                f"  {path}: {int(got.size)} bytes, sha256 {got.checksum}\n"
                f"    TFDS registered {int(expected.size)} bytes, sha256 {expected.checksum}"
            )
    if accepted and not accept_checksums:
        raise ChecksumMismatchError(
            f"{builder.name}: {len(accepted)} source file(s) differ from the checksums TFDS "
            "registered:\n" + "\n".join(lines) + "\nIf these files come from a source you trust "
            f"(e.g. a Linux distribution's package or a mirror), {ACCEPT_HOW}: the decoded "
            "content is then validated and the accepted checksums are recorded next to the "
            "prepared data."
        )
    return accepted


def _split_stats(builder, split: str) -> dict[str, Any]:
    """Count, image shapes, label range, per-class counts and pixel statistics of a split.

    Per example inside ``tf.data`` (images of any size), then summed here. Datasets without an
    ``image`` and a ``label`` feature get their count only.
    """
    features = builder.info.features
    ds = builder.as_dataset(split=split, shuffle_files=False)
    if not {"image", "label"} <= set(features.keys()):
        return {"num_examples": int(ds.reduce(0, lambda n, _: n + 1))}
    num_classes = features["label"].num_classes
    want_shape = features["image"].shape

    def per_example(ex):
        image = tf.cast(ex["image"], tf.float64) / 255.0
        return (
            tf.cast(ex["label"], tf.int64),
            tf.reduce_sum(image),
            tf.reduce_sum(tf.square(image)),
            tf.size(image, out_type=tf.int64),
            tf.shape(ex["image"], out_type=tf.int64),
        )

    ds = ds.map(per_example, num_parallel_calls=tf.data.AUTOTUNE).batch(2000)
    count, pixels, total, total_sq = 0, 0, 0.0, 0.0
    class_counts = np.zeros(num_classes, np.int64)
    shapes = set()
    for labels, sums, squares, sizes, image_shapes in ds.as_numpy_iterator():
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ContentError(
                f"{builder.name} {split}: labels outside [0, {num_classes}): "
                f"{sorted(set(labels[(labels < 0) | (labels >= num_classes)].tolist()))}"
            )
        class_counts += np.bincount(labels, minlength=num_classes)
        shapes.update(map(tuple, image_shapes.tolist()))
        count += len(labels)
        pixels += int(sizes.sum())
        total += float(sums.sum())
        total_sq += float(squares.sum())
    bad = [s for s in shapes if any(w is not None and w != g for w, g in zip(want_shape, s))]
    if bad or count == 0:
        raise ContentError(
            f"{builder.name} {split}: {count} examples, image shapes {bad} not {want_shape}."
        )
    mean = total / pixels
    return {
        "num_examples": count,
        "image_shape": list(next(iter(shapes))) if len(shapes) == 1 else None,
        "class_counts": class_counts.tolist(),
        "pixel_mean": round(mean, 6),
        "pixel_std": round(float(np.sqrt(max(total_sq / pixels - mean * mean, 0.0))), 6),
    }


def validate_content(builder) -> dict[str, dict[str, Any]]:
    """Statistics of every prepared split, checked against `EXPECTED`; raises `ContentError`."""
    expected = EXPECTED.get(builder.name, {})
    stats = {}
    for split in sorted(builder.info.splits):
        s = stats[split] = _split_stats(builder, split)
        want = expected.get(split)
        if want is None:
            continue
        problems = []
        if s["num_examples"] != want.num_examples:
            problems.append(f"{s['num_examples']} examples, expected {want.num_examples}")
        if want.class_counts is not None and tuple(s["class_counts"]) != want.class_counts:
            problems.append(f"class counts {s['class_counts']}, expected {list(want.class_counts)}")
        for key in ("pixel_mean", "pixel_std"):
            value = getattr(want, key)
            if value is not None and abs(s[key] - value) > want.tolerance:
                problems.append(f"{key} {s[key]:.4f}, expected {value} ± {want.tolerance}")
        if problems:
            raise ContentError(f"{builder.name} {split}: " + "; ".join(problems))
    return stats


def _offline_manager_factory(builder, accepted: dict[str, Any], source_dir: str):
    """Wraps the builder's ``_make_download_manager``: accepted checksums in, downloads off."""
    make = builder._make_download_manager

    def refuse(resource):
        raise FileNotFoundError(
            f"{builder.name} wants {resource.url}, which is not in {source_dir!r} under a name "
            "TFDS registered; tfsd prepares offline and never downloads."
        )

    def make_offline(download_dir, download_config):
        manager = make(download_dir, download_config)
        # DownloadManager.__init__ keeps the expected UrlInfo per URL in _url_infos (checked by
        # _register_or_validate_checksums) and fetches through _download (TFDS 4.9.x).
        if not isinstance(getattr(manager, "_url_infos", None), dict):
            raise RuntimeError(
                f"tensorflow_datasets {tfds.__version__}: DownloadManager has no _url_infos; "
                "tfsd.data.prepare supports 4.9.x."
            )
        manager._url_infos.update(accepted)
        manager._download = refuse
        return manager

    return make_offline


def prepare(
    name: str,
    source_dir: str,
    *,
    data_dir: str | None = None,
    accept_checksums: bool = False,
) -> dict[str, Any]:
    """Prepares TFDS dataset ``name`` in ``data_dir`` from the source files in ``source_dir``.

    Example (Debian's package ``dataset-fashion-mnist``)::

        prepare("fashion_mnist", "/usr/share/datasets/fashion-mnist", accept_checksums=True)

    Args:
        name: TFDS name, optionally with a config and version (``"imagenette/320px-v2"``).
        source_dir: folder holding the files TFDS registers for the dataset, under TFDS's file
            names (``train-images-idx3-ubyte.gz``...); for datasets with manual download
            instructions, what TFDS wants in its ``manual_dir``.
        data_dir: TFDS data directory (default: TFDS's, ``~/tensorflow_datasets``).
        accept_checksums: prepare from files whose size/sha256 differ from TFDS's registered
            ones; their content is then validated and their checksums recorded.

    Returns:
        The record written to ``RECORD_FILE`` (also returned, unchanged, when the dataset was
        prepared already).
    """
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
        path = os.path.join(builder.data_dir, RECORD_FILE)
        if tf.io.gfile.exists(path):
            with tf.io.gfile.GFile(path) as f:
                return json.load(f)
        return {"dataset": builder.info.full_name, "prepared_by": "tfds"}
    source_dir = os.path.abspath(os.path.expanduser(source_dir))
    accepted = check_sources(builder, source_dir, accept_checksums)
    builder._make_download_manager = _offline_manager_factory(builder, accepted, source_dir)
    start = time.time()
    # Extracted copies go to a scratch folder deleted afterwards: only TFDS's dataset remains.
    with tempfile.TemporaryDirectory(prefix="tfsd-prepare-") as scratch:
        builder.download_and_prepare(
            download_dir=scratch,
            download_config=tfds.download.DownloadConfig(
                manual_dir=source_dir,
                try_download_gcs=False,
                download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
            ),
        )
    try:
        # Decoding every image is cheap for Fashion-MNIST (seconds), not for ImageNet (hours):
        # files that match TFDS's checksums are upstream's own, so their content is taken as is.
        if accepted or builder.name in EXPECTED:
            stats = validate_content(builder)
        else:
            stats = {k: {"num_examples": v.num_examples} for k, v in builder.info.splits.items()}
    except ContentError:
        shutil.rmtree(builder.data_dir, ignore_errors=True)  # never leave a bad dataset
        raise
    record = {
        "dataset": builder.info.full_name,
        "source_dir": source_dir,
        "accepted_checksums": {
            url: {"filename": i.filename, "size": int(i.size), "sha256": i.checksum}
            for url, i in sorted(accepted.items())
        },
        "splits": stats,
        "checked_against": sorted(EXPECTED.get(builder.name, {})),
        "tfds_version": tfds.__version__,
        "seconds": round(time.time() - start, 1),
    }
    if accepted:
        tfds.download.checksums.save_url_infos(
            builder.data_path / ACCEPTED_FILE, dict(sorted(accepted.items()))
        )
    with tf.io.gfile.GFile(os.path.join(builder.data_dir, RECORD_FILE), "w") as f:
        json.dump(record, f, indent=2)
    return record
