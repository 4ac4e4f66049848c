"""Offline TFDS preparation (`tfsd.data.prepare`): the checksum policy, validation, the record.

Against TFDS's real builder machinery (``download_and_prepare``, its download manager and its
checksums file) with a tiny builder of the test's own (`tests/tfds_fixtures.py`): 60 records,
prepared in about a second. The real Fashion-MNIST files are in `tests/test_fashion_mnist.py`.
"""

import json
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tests import tfds_fixtures
from tfsd.data import prepare
from tfsd.data import tfds as tfds_source


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
    """Registers the tiny builder once per process (TFDS registers a class name once)."""
    folder = tmp_path_factory.mktemp("tiny_builder")
    if "tfsd_tiny_files" not in sys.modules:
        tfds_fixtures.write_tiny_builder(folder)
        sys.path.insert(0, str(folder))
        __import__("tfsd_tiny_files")
    return "tfsd_tiny_files"


def test_matching_files_prepare_tfds_own_dataset_offline(tiny_builder, tmp_path):
    source = tfds_fixtures.write_source(tmp_path / "src")
    record = prepare.prepare(tiny_builder, str(source), data_dir=str(tmp_path / "data"))
    builder = tfds.builder(tiny_builder, data_dir=str(tmp_path / "data"))
    assert builder.is_prepared()
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == tfds_fixtures.NUM
    assert record["accepted_checksums"] == {}
    # Upstream's own files: counts only (decoding all of ImageNet to validate it would take hours).
    assert record["splits"] == {"train": {"num_examples": 40}, "test": {"num_examples": 20}}
    assert not (builder.data_path / prepare.ACCEPTED_FILE).exists()
    saved = json.loads((builder.data_path / prepare.RECORD_FILE).read_text())
    assert saved == record
    # Prepared: a second call only reads the record back.
    assert prepare.prepare(tiny_builder, str(source), data_dir=str(tmp_path / "data")) == record
    # The decoded examples are the source file's records (TFDS stores them in its own order).
    raw = np.frombuffer(tfds_fixtures.content(), np.uint8).reshape(-1, 65)
    got = sorted(
        ex["image"].tobytes() + bytes([ex["label"]])
        for ex in builder.as_dataset(split="train").as_numpy_iterator()
    )
    assert got == sorted(r.tobytes() for r in raw[:40])


def test_mismatch_is_an_error_naming_the_file_and_the_flag(tiny_builder, tmp_path):
    source = tfds_fixtures.write_source(tmp_path / "src", upstream=False)
    with pytest.raises(prepare.ChecksumMismatchError) as e:
        prepare.prepare(tiny_builder, str(source), data_dir=str(tmp_path / "data"))
    message = str(e.value)
    assert str(source / "tiny-images.bin") in message
    assert "--accept_checksums" in message and "data.accept_checksums" in message
    assert not (tmp_path / "data").exists()  # nothing written


def test_accepted_mismatch_is_validated_and_recorded_next_to_the_data(tiny_builder, tmp_path):
    source = tfds_fixtures.write_source(tmp_path / "src", upstream=False)
    data = tmp_path / "data"
    record = prepare.prepare(tiny_builder, str(source), data_dir=str(data), accept_checksums=True)
    builder = tfds.builder(tiny_builder, data_dir=str(data))
    accepted = tfds.download.checksums.load_url_infos(builder.data_path / prepare.ACCEPTED_FILE)
    computed = tfds.download.checksums.compute_url_info(source / "tiny-images.bin")
    assert accepted == {tfds_fixtures.URL: computed}
    assert record["accepted_checksums"][tfds_fixtures.URL]["sha256"] == computed.checksum
    # Accepted: the decoded content was validated; statistics computed here in NumPy.
    raw = np.frombuffer(tfds_fixtures.content(), np.uint8).reshape(-1, 65)
    train = record["splits"]["train"]
    assert train["class_counts"] == [10, 10, 10, 10] and train["image_shape"] == [8, 8, 1]
    assert abs(train["pixel_mean"] - raw[:40, :64].mean() / 255) < 1e-6
    assert abs(train["pixel_std"] - raw[:40, :64].std() / 255) < 1e-6
    # TFDS's registered checksums (next to the builder's code) are untouched.
    registered = tfds.download.checksums.load_url_infos(builder._checksums_path)
    assert registered[tfds_fixtures.URL] != computed


def test_accepted_files_with_wrong_content_leave_no_dataset(tiny_builder, tmp_path, monkeypatch):
    """Published per-class counts (here: 10 each) disagree: ContentError, the version removed."""
    train = prepare.SplitExpectation(40, (10,) * 4, None, None)
    monkeypatch.setitem(prepare.EXPECTED, tiny_builder, {"train": train})
    source = tfds_fixtures.write_source(tmp_path / "src", upstream=False, skewed=True)
    data = tmp_path / "data"
    with pytest.raises(prepare.ContentError, match=r"class counts \[40, 0, 0, 0\]"):
        prepare.prepare(tiny_builder, str(source), data_dir=str(data), accept_checksums=True)
    assert not tfds.builder(tiny_builder, data_dir=str(data)).is_prepared()


def test_missing_source_file_is_named_and_nothing_is_downloaded(tiny_builder, tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(FileNotFoundError, match="tiny-images.bin"):
        prepare.prepare(tiny_builder, str(tmp_path / "src"), data_dir=str(tmp_path / "data"))


def test_training_source_prepares_from_source_dir_and_explains_otherwise(tiny_builder, tmp_path):
    """The TFDS source of tfsd.data (what tfsd.train uses) prepares from ``data.source_dir``."""
    spec = tfds_source.SPECS["fashion_mnist"]
    # The tiny builder stands in for a dataset tfsd knows (the SPECS table), as fashion_mnist.
    tfds_source.SPECS[tiny_builder] = spec
    try:
        from tfsd import data as data_lib

        config = data_lib.default_config()
        config.name = tiny_builder
        config.source_dir = str(tfds_fixtures.write_source(tmp_path / "src", upstream=False))
        with pytest.raises(prepare.ChecksumMismatchError):
            data_lib.get_dataset_info(config, data_dir=str(tmp_path / "data"))
        config.accept_checksums = True
        info = data_lib.get_dataset_info(config, data_dir=str(tmp_path / "data"))
        assert (info.num_train_examples, info.num_eval_examples, info.num_classes) == (40, 20, 4)
    finally:
        del tfds_source.SPECS[tiny_builder]


def test_not_prepared_fashion_mnist_names_the_package_and_the_command(tmp_path):
    from tfsd import data as data_lib

    config = data_lib.default_config()
    config.name = "fashion_mnist"
    with pytest.raises(data_lib.DatasetNotPreparedError) as e:
        data_lib.get_dataset_info(config, data_dir=str(tmp_path))
    assert "apt-get install dataset-fashion-mnist" in str(e.value)
    assert "tfsd-prepare --dataset=fashion_mnist" in str(e.value)
