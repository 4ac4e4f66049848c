"""tfsd.serving.saved_model: export_saved_model, export_run, verify_export, check_fold, signatures.

There is no ``tensorflow_model_server`` binary in the package registries reachable here, so the
server's side is checked through its contract: ``tf.saved_model.load`` in a fresh process,
``saved_model_cli``, and REST bodies mapped to tensors as TF Serving's REST API does. Versions and
atomic publication: tests/test_publish.py; warm-up records: tests/test_warmup.py; the
``tfsd.export`` command: tests/test_export.py.
"""

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import shared_artifact
from tests.helpers import png_of_zeros, randomize_batchnorm, tiny_config
from tfsd import data as data_lib
from tfsd import models
from tfsd.serving import image_limits
from tfsd.serving import publish as publish_lib
from tfsd.serving import saved_model as saved_model_lib
from tfsd.serving import signatures as signatures_lib
from tfsd.serving import warmup as warmup_lib
from tfsd.serving.image_limits import ImageLimits
from tfsd.training import run_dir
from tfsd.training import task as task_lib

BIN = Path(sys.executable).parent
NAMES = [f"class_{i}" for i in range(10)]

# The registered tiny models, one per family and per scaling convention: the CIFAR ResNet with the
# paper's scaling (p folded into the branch's last BatchNorm), EfficientNet with inverted scaling.
# The export machinery is what is tested, so each runs at its registered size.
VARIANTS = {
    "resnet": dict(
        name="test_resnet", size=16, survival_prob=0.5, sd_scale_at="inference",
        preprocess="none",
    ),
    "effnet": dict(
        name="test_efficientnet", size=32, survival_prob=0.5, sd_scale_at="train",
        preprocess="inception",
    ),
}  # fmt: skip


def _env():
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")


def _build(variant, **changes):
    kwargs = dict(VARIANTS[variant], **changes)
    name, preprocess, size = kwargs.pop("name"), kwargs.pop("preprocess"), kwargs.pop("size")
    model = models.create_model(name, num_classes=10, input_shape=(size, size, 3), **kwargs)
    randomize_batchnorm(model, seed=len(variant))  # gamma 1 / beta 0 would hide fold errors
    return model, preprocess


def _images(size, n=8, seed=0):
    return np.asarray(
        tf.random.stateless_uniform([n, size, size, 3], seed=[seed, 1], maxval=255.0)
    ).round()


def _export_variants(directory: Path) -> dict[str, str]:
    """Both variants built from seed 0, their weights saved, then exported (`exported`)."""
    paths = {}
    for variant, spec in VARIANTS.items():
        keras.utils.set_random_seed(0)
        model, preprocess = _build(variant)
        model.save_weights(directory / f"{variant}.weights.h5")
        paths[variant] = saved_model_lib.export_saved_model(
            model, str(directory / variant), preprocess=preprocess, class_names=NAMES,
            sample_images=_images(spec["size"]), model_name=variant,
        )  # fmt: skip
    return paths


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{variant: (keras model, preprocess fn, version dir)}, read-only.

    Exported once per test session (`shared_artifact`: both xdist workers and, under .ci/run,
    both tiers); each worker rebuilds the Keras models with the exported weights.
    """
    artifact = shared_artifact(tmp_path_factory, "saved-model-variants", _export_variants)
    paths = json.loads((artifact / "result.json").read_text())
    out = {}
    for variant, spec in VARIANTS.items():
        model, preprocess = _build(variant)
        model.load_weights(artifact / f"{variant}.weights.h5")
        out[variant] = (model, signatures_lib.preprocess_fn(preprocess, spec["size"]),
                        paths[variant])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def loaded(exported):
    """{variant: the exported SavedModel loaded once} for the tests that only call it."""
    return {variant: tf.saved_model.load(path) for variant, (_, _, path) in exported.items()}


def _reference(model, preprocess, images=None, blobs=None):
    """Unfolded Keras inference logits, preprocessing run eagerly for encoded inputs."""
    if blobs is not None:
        images = np.stack([preprocess(tf.constant(b)).numpy() for b in blobs])
    return model(tf.constant(images, tf.float32), training=False).numpy()


# -------------------------------------------------------------------------------------------------
# The signature contract.
# -------------------------------------------------------------------------------------------------

_FRESH_PROCESS = """
import sys, numpy as np, tensorflow as tf
for path, inputs, out in zip(*[iter(sys.argv[1:])] * 3):
    m = tf.saved_model.load(path)
    data = np.load(inputs, allow_pickle=True)
    results = {}
    for sig, key in (("serving_default", "images"), ("serving_bytes", "image_bytes"),
                     ("serving_examples", "examples")):
        for k, v in m.signatures[sig](**{key: tf.constant(data[key])}).items():
            results[f"{sig}/{k}"] = v.numpy()
    np.savez(out, **results)
print("tfsd imported:", "tfsd" in sys.modules)
"""


@pytest.fixture(scope="module")
def fresh_process(exported, tmp_path_factory):
    """Every variant's export served by one fresh process (`_FRESH_PROCESS`: one TensorFlow
    start, not one per variant): {variant: (images, blobs, outputs)} and the process."""
    tmp = tmp_path_factory.mktemp("fresh")
    argv, inputs = [], {}
    for variant, (_, _, path) in exported.items():
        images = _images(VARIANTS[variant]["size"], 5, seed=3)
        blobs = warmup_lib.encode_jpeg(images)
        examples = [warmup_lib.image_example(b) for b in blobs]
        np.savez(
            tmp / f"{variant}_in.npz", images=images.astype(np.float32),
            image_bytes=np.array(blobs, dtype=object), examples=np.array(examples, dtype=object),
        )  # fmt: skip
        argv += [path, str(tmp / f"{variant}_in.npz"), str(tmp / f"{variant}_out.npz")]
        inputs[variant] = (images, blobs)
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, *argv],
        capture_output=True, text=True, env=_env(), timeout=300,
    )  # fmt: skip
    outputs = {}
    if proc.returncode == 0:
        outputs = {v: np.load(tmp / f"{v}_out.npz", allow_pickle=True) for v in exported}
    return {v: (*inputs[v], outputs.get(v)) for v in exported}, proc


@pytest.mark.e2e  # the point: a process that never imported tfsd loads and serves the export
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_saved_model_matches_keras_through_every_signature_in_fresh_process(
    exported, fresh_process, variant
):
    """Reference: the unfolded Keras model in this process (`_reference`)."""
    model, preprocess, _ = exported[variant]
    served, proc = fresh_process
    images, blobs, out = served[variant]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tfsd imported: False" in proc.stdout  # the SavedModel needs no tfsd code
    expected = {
        "serving_default": _reference(model, preprocess, images=images),
        "serving_bytes": _reference(model, preprocess, blobs=blobs),
    }
    expected["serving_examples"] = expected["serving_bytes"]
    for sig, logits in expected.items():
        assert saved_model_lib.relative_error(out[f"{sig}/logits"], logits) <= 1e-5, sig
        probs = tf.nn.softmax(logits).numpy()
        np.testing.assert_allclose(out[f"{sig}/probabilities"], probs, rtol=1e-4, atol=1e-6)
        top = np.argsort(-probs, axis=1)[:, :5]
        # Ties aside, classes are the top-5 of the reference, names follow classes.
        np.testing.assert_array_equal(out[f"{sig}/classes"][:, 0], top[:, 0])
        assert out[f"{sig}/classes"].dtype == np.int32
        np.testing.assert_allclose(
            out[f"{sig}/scores"], np.take_along_axis(probs, out[f"{sig}/classes"], 1), rtol=1e-4
        )
        names = [[n.decode() for n in row] for row in out[f"{sig}/class_names"]]
        assert names == [[NAMES[c] for c in row] for row in out[f"{sig}/classes"]]


def _saved_model_cli(*args):
    proc = subprocess.run(
        [str(BIN / "saved_model_cli"), *args], capture_output=True, text=True, env=_env(),
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _signature_block(show_all: str, signature: str) -> str:
    start = show_all.index(f"signature_def['{signature}']")
    end = show_all.find("signature_def[", start + 1)
    return show_all[start : end if end > 0 else None]


@pytest.mark.e2e  # TensorFlow's own saved_model_cli script, a fresh process without tfsd
def test_saved_model_cli_shows_documented_signatures_and_runs(exported, tmp_path):
    """Reference: the signature table of docs/serving.md; the Keras model's top class."""
    model, _, path = exported["resnet"]
    size = VARIANTS["resnet"]["size"]
    show = _saved_model_cli("show", "--dir", path, "--all")
    expected_inputs = {
        "serving_default": ("images", "DT_FLOAT", f"(-1, {size}, {size}, 3)"),
        "serving_bytes": ("image_bytes", "DT_STRING", "(-1)"),
        "serving_examples": ("examples", "DT_STRING", "(-1)"),
    }
    outputs = {
        "logits": ("DT_FLOAT", "(-1, 10)"),
        "probabilities": ("DT_FLOAT", "(-1, 10)"),
        "classes": ("DT_INT32", "(-1, 5)"),
        "scores": ("DT_FLOAT", "(-1, 5)"),
        "class_names": ("DT_STRING", "(-1, 5)"),
    }
    for sig, (key, dtype, shape) in expected_inputs.items():
        block = _signature_block(show, sig)
        assert "Method name is: tensorflow/serving/predict" in block
        inputs, outs = block.split("output(s):")
        assert f"inputs['{key}'] tensor_info:\n" in inputs, block
        assert f"dtype: {dtype}\n" in inputs and f"shape: {shape}\n" in inputs, block
        for out, (odtype, oshape) in outputs.items():
            part = outs.split(f"outputs['{out}'] tensor_info:")[1].split("name:")[0]
            assert f"dtype: {odtype}" in part and f"shape: {oshape}" in part, (sig, out, part)
    # saved_model_cli run on serving_default with an .npy input: same top class as Keras.
    images = _images(size, 4, seed=9).astype(np.float32)
    np.save(tmp_path / "x.npy", images)
    _saved_model_cli(
        "run", "--dir", path, "--tag_set", "serve", "--signature_def", "serving_default",
        "--inputs", f"images={tmp_path / 'x.npy'}", "--outdir", str(tmp_path / "out"),
    )  # fmt: skip
    classes = np.load(tmp_path / "out" / "classes.npy")
    logits = model(tf.constant(images), training=False).numpy()
    np.testing.assert_array_equal(classes[:, 0], logits.argmax(axis=1))


def _graph_op_types(path):
    """Op type of every node of every function in ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel.FromString(Path(path, "saved_model.pb").read_bytes())
    ops = []
    for meta in sm.meta_graphs:
        ops += [n.op for n in meta.graph_def.node]
        ops += [n.op for f in meta.graph_def.library.function for n in f.node_def]
    return ops


def test_exported_graph_has_no_random_op_and_folding_removes_every_multiply(exported, tmp_path):
    """Reference: op counts of the same architecture exported without stochastic depth."""
    model, preprocess = _build("resnet")
    plain, _ = _build("resnet", survival_prob=1.0)
    images = _images(VARIANTS["resnet"]["size"])
    paths = {
        "folded": exported["resnet"][2],
        "unfolded": saved_model_lib.export_saved_model(
            model, str(tmp_path / "u"), preprocess=preprocess, fold=False, sample_images=images
        ),
        "plain": saved_model_lib.export_saved_model(
            plain, str(tmp_path / "p"), preprocess=preprocess, sample_images=images
        ),
    }
    ops = {k: _graph_op_types(p) for k, p in paths.items()}
    for k, types in ops.items():
        assert not [t for t in types if "Random" in t], k
    muls = {k: types.count("Mul") for k, types in ops.items()}
    # The unfolded export multiplies by p in every block (can fail: there is something to fold).
    assert muls["unfolded"] > muls["plain"]
    assert muls["folded"] == muls["plain"]


def _rest_to_tensor(body: str) -> tf.Tensor:
    """Maps a REST ``predict`` body in row format to the single input tensor, as TF Serving does.

    TF Serving's REST API (tensorflow_serving/util/json_tensor.h): ``instances`` is a list of rows;
    with one named input a row is the value itself; ``{"b64": s}`` is the base64-decoded bytes.
    """
    rows = json.loads(body)["instances"]
    values = [base64.b64decode(r["b64"]) if isinstance(r, dict) and "b64" in r else r for r in rows]
    if all(isinstance(v, bytes) for v in values):
        return tf.constant(values, tf.string)
    return tf.constant(values, tf.float32)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_rest_b64_body_through_serving_bytes_matches_serving_default(loaded, variant):
    """Real photos (scikit-image's PNG and JPEG files) sent as a REST body; reference: the same
    files decoded by Pillow and preprocessed in Python, through ``serving_default``."""
    import skimage.data
    from PIL import Image

    size = VARIANTS[variant]["size"]
    loaded = loaded[variant]
    files = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg"]
    blobs = [Path(skimage.data.__file__).parent.joinpath(f).read_bytes() for f in files]
    body = json.dumps({
        "signature_name": "serving_bytes",
        "instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in blobs],
    })  # fmt: skip
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=_rest_to_tensor(body))
    # The same images decoded by another decoder (Pillow) and preprocessed in Python.
    mode = VARIANTS[variant]["preprocess"]
    pixels = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs]
    crop = data_lib.center_crop if mode == "inception" else data_lib.resize
    images = np.stack([crop(tf.constant(p), size).numpy() for p in pixels])
    rows = json.dumps({"instances": images.tolist()})
    by_images = loaded.signatures["serving_default"](images=_rest_to_tensor(rows))
    np.testing.assert_array_equal(by_bytes["classes"][:, 0], by_images["classes"][:, 0])
    # PNG decodes identically everywhere; JPEG decoders may differ by a grey level or so.
    png = [i for i, f in enumerate(files) if f.endswith(".png")]
    err = saved_model_lib.relative_error(
        tf.gather(by_bytes["logits"], png), tf.gather(by_images["logits"], png)
    )
    assert err <= 1e-5
    assert saved_model_lib.relative_error(by_bytes["logits"], by_images["logits"]) <= 2e-2


def _peak_rss_growth_mib(fn) -> float:
    """Peak resident memory of ``fn()`` above what the process held before it, in MiB.

    Linux: writing 5 to /proc/self/clear_refs resets VmHWM (the peak) to the current VmRSS.
    """

    def status(key):
        return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    fn()
    return (status("VmHWM") - before) / 1024


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_image_bomb_is_refused_from_its_header_and_memory_stays_bounded(loaded, variant):
    """An 8000 x 8000 PNG of 183 KiB (64 MP: 183 MiB as uint8, 732 MiB as float32) is refused
    by its header without being decoded; a 4000 x 4000 one (16 MP, within the default 25 MP) is
    decoded as uint8 and resized without a float copy of the full image. Measured on the code
    before this check: +916 MiB for the bomb, +229 MiB for the 16 MP image ("none")."""
    serve = loaded[variant].signatures["serving_bytes"]
    small = png_of_zeros(200, 200)
    serve(image_bytes=tf.constant([small]))  # traced and warm before measuring
    bomb, large = png_of_zeros(8000, 8000), png_of_zeros(4000, 4000)
    assert len(bomb) < 200 << 10
    out = {}
    growth = _peak_rss_growth_mib(lambda: out.update(serve(image_bytes=tf.constant([bomb, small]))))
    assert out["valid"].numpy().tolist() == [False, True]
    limit = image_limits.DEFAULT_MAX_PIXELS
    expected = f"the image is over the limit of {limit} pixels (width x height)"
    assert out["error"].numpy()[0].decode() == expected
    assert growth < 32, growth  # nothing of the 183 MiB image was allocated
    growth = _peak_rss_growth_mib(lambda: out.update(serve(image_bytes=tf.constant([large]))))
    assert out["valid"].numpy().tolist() == [True]
    uint8_mib = 4000 * 4000 * 3 / 2**20  # 45.8 MiB; float32 would add 183 MiB
    assert growth < 1.5 * uint8_mib, growth


def test_bad_images_fail_only_their_own_row_with_the_reason(exported, loaded):
    """Nothing raises for a bad image: each row says valid and why not (docs/serving.md)."""
    from PIL import Image

    model, preprocess, _ = exported["effnet"]
    size = VARIANTS["effnet"]["size"]
    loaded = loaded["effnet"]
    pixels = np.asarray(_images(size, 1)[0], np.uint8)
    jpeg = warmup_lib.encode_jpeg(pixels[None])[0]
    encoded = {}
    for fmt in ("PNG", "BMP", "GIF", "WEBP"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, fmt)
        encoded[fmt] = buffer.getvalue()
    blobs = [jpeg, b"not an image", jpeg[: len(jpeg) // 3], encoded["PNG"], encoded["BMP"],
             encoded["GIF"], encoded["WEBP"], b""]  # fmt: skip
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(blobs))
    # GIF is refused: TF's GIF decoder reads every frame before its size is known.
    assert out["valid"].numpy().tolist() == [True, False, False, True, True, False, False, False]
    messages = ImageLimits().messages()
    unknown, corrupt = messages[image_limits.UNKNOWN_FORMAT], messages[image_limits.UNDECODABLE]
    assert [e.decode() for e in out["error"].numpy()] == [
        "", unknown, corrupt, "", "", unknown, unknown, unknown,
    ]  # fmt: skip
    good = [0, 3, 4]
    ref = _reference(model, preprocess, blobs=[blobs[i] for i in good])
    assert saved_model_lib.relative_error(tf.gather(out["logits"], good), ref) <= 1e-5
    bad = [1, 2, 5, 6, 7]
    assert (out["classes"].numpy()[bad] == -1).all() and (out["logits"].numpy()[bad] == 0).all()
    assert (out["class_names"].numpy()[bad] == b"").all()
    examples = [warmup_lib.image_example(jpeg), b"\x01garbage", warmup_lib.image_example(b"")]
    out = loaded.signatures["serving_examples"](examples=tf.constant(examples))
    assert out["valid"].numpy().tolist() == [True, False, False]
    assert [e.decode() for e in out["error"].numpy()] == ["", corrupt, unknown]
    # serving_default has the same outputs; its float rows are always valid.
    out = loaded.signatures["serving_default"](images=tf.constant(_images(size, 2)))
    assert out["valid"].numpy().tolist() == [True, True]


def test_image_limits_are_configurable_and_refuse_before_decoding():
    """Small limits on an in-memory servable (the signatures' own functions, run eagerly)."""
    model, preprocess = _build("resnet")
    size = VARIANTS["resnet"]["size"]
    limits = ImageLimits(max_pixels=30 * 30, max_bytes=2000)
    servable = signatures_lib.Servable(
        model, signatures_lib.preprocess_fn(preprocess, size), None, limits
    )
    at_limit, wide = png_of_zeros(30, 30, 30), png_of_zeros(31, 30, 30)
    noisy = tf.io.encode_png(np.asarray(_images(40, 1)[0], np.uint8)).numpy()  # > 2000 bytes
    assert len(noisy) > 2000 and len(at_limit) < 2000
    out = servable.serving_bytes(tf.constant([at_limit, wide, noisy]))
    assert out["valid"].numpy().tolist() == [True, False, False]
    assert out["error"].numpy()[1].decode() == limits.messages()[image_limits.TOO_MANY_PIXELS]
    assert out["error"].numpy()[2].decode() == limits.messages()[image_limits.TOO_MANY_BYTES]
    with pytest.raises(ValueError, match="max_pixels must be a positive integer"):
        signatures_lib.Servable(model, preprocess, None, ImageLimits(max_pixels=0))


# -------------------------------------------------------------------------------------------------
# Verification before publishing, argument errors, .keras files.
# -------------------------------------------------------------------------------------------------


def test_fold_check_refuses_to_publish_a_wrong_fold(tmp_path, monkeypatch):
    model, preprocess = _build("resnet")
    real_fold = models.fold_stochastic_depth

    def bad_fold(m):
        folded = real_fold(m)
        bn = [x for x in folded._flatten_layers() if isinstance(x, keras.layers.BatchNormalization)]
        bn[-1].beta.assign(bn[-1].beta + 1.0)
        return folded

    monkeypatch.setattr(models, "fold_stochastic_depth", bad_fold)
    base = tmp_path / "base"
    with pytest.raises(publish_lib.ExportError, match="folded model differs"):
        saved_model_lib.export_saved_model(
            model, str(base), preprocess=preprocess, sample_images=_images(16)
        )
    assert not base.exists() or publish_lib.existing_versions(str(base)) == []


def test_bad_arguments_get_clear_errors(tmp_path):
    model, preprocess = _build("resnet")
    base = str(tmp_path / "b")
    with pytest.raises(ValueError, match="version must be a positive integer"):
        saved_model_lib.export_saved_model(model, base, version=0, preprocess=preprocess)
    with pytest.raises(ValueError, match="3 class names for a model with 10 outputs"):
        saved_model_lib.export_saved_model(
            model, base, class_names=["a", "b", "c"], preprocess=preprocess
        )
    with pytest.raises(ValueError, match="preprocess must be"):
        saved_model_lib.export_saved_model(model, base, preprocess="bilinear")
    with pytest.raises(ValueError, match="preprocess is required"):
        saved_model_lib.export_saved_model(model, base)  # no silent ImageNet crop of any model
    dynamic = models.create_model("test_resnet", num_classes=10, input_shape=(None, None, 3))
    with pytest.raises(ValueError, match="fixed H and W"):
        saved_model_lib.export_saved_model(dynamic, base)
    Path(tmp_path, "file").write_text("x")
    with pytest.raises(publish_lib.ExportError, match="not a directory"):
        saved_model_lib.export_saved_model(model, str(tmp_path / "file"), preprocess=preprocess)
    with pytest.raises(publish_lib.ExportError, match="does not exist"):
        saved_model_lib.export_keras_file(str(tmp_path / "missing.keras"), base)
    assert publish_lib.existing_versions(base) == []


def test_model_name_and_models_config_are_checked_before_anything_is_published(tmp_path):
    """The old order published version 1, then refused the name: a live version without
    models.config, and a retry published version 2."""
    model, preprocess = _build("resnet")
    kw = dict(preprocess=preprocess, sample_images=_images(16))
    base = tmp_path / "my export"  # the default model name: the base's name, not URL-safe
    with pytest.raises(ValueError, match="model_name must be a URL-safe name"):
        saved_model_lib.export_saved_model(model, str(base), **kw)
    assert not base.exists() or sorted(os.listdir(base)) == []
    with pytest.raises(ValueError, match="model_name must be a URL-safe name"):
        saved_model_lib.export_saved_model(model, str(tmp_path / "b"), model_name="a/b", **kw)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "models.config").write_text("model_config_list { config { nme: 'x' } }")
    with pytest.raises(publish_lib.ExportError, match="is not a ModelServerConfig text proto"):
        saved_model_lib.export_saved_model(model, str(broken), **kw)
    assert sorted(os.listdir(broken)) == ["models.config"]


def _abandoned_tmp_dirs(base: Path) -> dict[str, Path]:
    """Temp dirs as crashed or running exports leave them: {case: path}."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)  # exited: a pid no process has (reuse within the test aside)
    host = socket.gethostname()
    owners = {
        "dead": {"host": host, "pid": dead_pid},
        "running": {"host": host, "pid": os.getpid()},
        "other_host": {"host": host + "-elsewhere", "pid": dead_pid},
        "no_owner": None,
    }
    dirs = {}
    for case, owner in owners.items():
        d = base / f"{publish_lib.TMP_PREFIX}{case}"
        (d / "variables").mkdir(parents=True)
        (d / "saved_model.pb").write_bytes(b"partial")
        if owner is not None:
            Path(str(d) + publish_lib.OWNER_SUFFIX).write_text(json.dumps(owner))
        dirs[case] = d
    # A crash between writing the owner file and creating the directory.
    dirs["dead_owner_only"] = base / f"{publish_lib.TMP_PREFIX}dead_owner_only"
    owner_only = Path(str(dirs["dead_owner_only"]) + publish_lib.OWNER_SUFFIX)
    owner_only.write_text(json.dumps(owners["dead"]))
    return dirs


def test_keras_file_export_matches_the_saved_model(exported, tmp_path):
    """Reference: the in-memory Keras model the ``.keras`` file was saved from (tfsd's
    StochasticDepth layers must load from the file: they are registered on import)."""
    model, _, _ = exported["resnet"]
    model.save(tmp_path / "m.keras")
    size = VARIANTS["resnet"]["size"]
    # The base holds temp dirs of earlier exports: only the one whose exporter provably died
    # (this host, pid gone) is removed; the others may still be running.
    (tmp_path / "base").mkdir()
    stale = _abandoned_tmp_dirs(tmp_path / "base")
    path = saved_model_lib.export_keras_file(
        str(tmp_path / "m.keras"), str(tmp_path / "base"),
        preprocess=VARIANTS["resnet"]["preprocess"], sample_images=_images(size),
    )  # fmt: skip
    images = _images(size, 3, seed=4)
    reloaded = tf.saved_model.load(path)  # (not the module's `loaded` fixture)
    out = reloaded.signatures["serving_default"](images=tf.constant(images))
    ref = _reference(model, None, images=images)
    assert saved_model_lib.relative_error(out["logits"], ref) <= 1e-5
    # Keras' own loader of an endpoint, which tracks the root's variable lists as its weights.
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    assert len(layer.trainable_weights) == len(reloaded.trainable_variables) > 0
    np.testing.assert_array_equal(layer(images)["logits"], out["logits"])
    assert "class_names" not in out  # no names were given
    for case in ("dead", "dead_owner_only"):
        assert not stale[case].exists() and not Path(str(stale[case]) + ".owner").exists()
    assert all(stale[case].is_dir() for case in ("running", "other_host", "no_owner"))
    left = sorted(n for n in os.listdir(tmp_path / "base") if n.startswith(publish_lib.TMP_PREFIX))
    assert left == sorted(
        [stale[c].name for c in ("running", "other_host", "no_owner")]
        + [stale[c].name + ".owner" for c in ("running", "other_host")]
    )  # and this export's own temp dir and owner file are gone


# -------------------------------------------------------------------------------------------------
# Runs: restoring checkpoints, EMA, errors (the shared `tiny_run`, copied where it is changed).
# -------------------------------------------------------------------------------------------------


def test_restore_run_uses_ema_when_present_and_raw_on_request(tiny_run, tmp_path):
    """Reference: the checkpoint's own ``ema/`` tensors, read with tf.train.load_checkpoint."""
    ema_model, config, _, ckpt = run_dir.restore_run(str(tiny_run.model_dir))
    raw_model, *_ = run_dir.restore_run(str(tiny_run.model_dir), weights="raw")
    reader = tf.train.load_checkpoint(ckpt)
    ema = task_lib.EMA(ema_model, float(config.ema_decay))
    for i, source in enumerate(ema.sources):
        np.testing.assert_array_equal(
            source.numpy(), reader.get_tensor(f"ema/{i}/.ATTRIBUTES/VARIABLE_VALUE")
        )
    differ = [
        not np.array_equal(a, b)
        for a, b in zip(ema_model.trainable_weights, raw_model.trainable_weights)
    ]
    assert any(differ)  # EMA and raw weights really are different sets
    # A run without EMA: restore_run decides from the run's config (ema_decay = 0), before it
    # reads a checkpoint, so a copy of tiny_run with that config is such a run.
    no_ema = tmp_path / "no_ema"
    shutil.copytree(tiny_run.model_dir, no_ema)
    config_file = no_ema / "config.json"
    config_file.write_text(json.dumps(dict(json.loads(config_file.read_text()), ema_decay=0.0)))
    with pytest.raises(run_dir.RunDirError, match="kept no EMA weights"):
        run_dir.restore_run(str(no_ema), weights="ema")


def test_run_errors_are_clear_and_write_nothing(tiny_run, tmp_path):
    base = tmp_path / "exports"
    with pytest.raises(publish_lib.ExportError, match="does not exist"):
        saved_model_lib.export_run(str(tmp_path / "nope"), str(base))
    (tmp_path / "empty").mkdir()
    with pytest.raises(publish_lib.ExportError, match="no config.json"):
        saved_model_lib.export_run(str(tmp_path / "empty"), str(base))
    run_dir.check_or_write_config(tiny_config(), str(tmp_path / "fresh"))
    with pytest.raises(publish_lib.ExportError, match="has no checkpoint"):
        saved_model_lib.export_run(str(tmp_path / "fresh"), str(base))
    run = tmp_path / "run"
    shutil.copytree(tiny_run.model_dir, run)  # changed below: a copy of the shared run
    with pytest.raises(publish_lib.ExportError, match="does not exist"):
        saved_model_lib.export_run(
            str(run), str(base), checkpoint=str(run / "checkpoints" / "ckpt-99")
        )
    (run / "no_checkpoints").mkdir()
    with pytest.raises(publish_lib.ExportError, match="holds no checkpoint"):
        saved_model_lib.export_run(str(run), str(base), checkpoint=str(run / "no_checkpoints"))
    # A checkpoint directory means its latest checkpoint.
    model, *_, used = run_dir.restore_run(str(run), checkpoint=str(run / "checkpoints"))
    assert used == tf.train.latest_checkpoint(str(run / "checkpoints"))
    # A checkpoint of another architecture: widen the model in the run's config.
    config = json.loads((run / "config.json").read_text())
    config["model"]["overrides"]["width"] = 0.5
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(publish_lib.ExportError, match="does not match the model"):
        saved_model_lib.export_run(str(run), str(base))
    assert not base.exists()
