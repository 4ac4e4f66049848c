"""tfsd.serving.tflite_images (``tfsd-tflite --calibration_images=DIR``) and
tfsd.serving.class_names: the folder's images are decoded as the export's serving_bytes does,
or refused; ImageNet names come from files inside tensorflow-datasets."""

import numpy as np
import pytest
import tensorflow as tf

from tests.helpers import write_image_folder
from tfsd.serving import class_names, tflite_convert, tflite_images


@pytest.fixture(scope="module")
def serving(tiny_export):
    return tflite_convert.ServingModel(str(tiny_export))


def test_folder_images_split_and_match_serving_bytes(serving, tmp_path):
    folder = write_image_folder(tmp_path / "photos", ("a", "b"), per_class=3)
    files = tflite_images.image_files(str(folder))
    assert len(files) == 6 and files == sorted(files)
    # The tiny run's export resizes ("none" preprocessing).
    data = tflite_images.load_folder_data(
        str(folder), serving, preprocess="none", calibration_steps=2, verify_images=10
    )
    assert data.calibration.shape == (2, serving.height, serving.width, 3)
    assert len(data.verification) == 4 and data.labels is None
    blob = tf.io.read_file(files[0])
    served = serving.loaded.signatures["serving_bytes"](image_bytes=blob[None])["logits"]
    ours = serving.signature(images=tf.constant(data.calibration[:1]))["logits"]
    np.testing.assert_allclose(served.numpy(), ours.numpy(), atol=1e-4)


def test_wrong_preprocessing_and_too_few_images_are_refused(serving, tmp_path):
    folder = write_image_folder(tmp_path / "photos", ("a",), per_class=3, size=40)
    with pytest.raises(tflite_convert.TFLiteError, match="not the export's"):
        tflite_images.load_folder_data(
            str(folder), serving, preprocess="inception", calibration_steps=1, verify_images=2
        )
    with pytest.raises(tflite_convert.TFLiteError, match="holds 3 images"):
        tflite_images.load_folder_data(
            str(folder), serving, preprocess="none", calibration_steps=3, verify_images=2
        )
    with pytest.raises(tflite_convert.TFLiteError, match="not a directory"):
        tflite_images.image_files(str(tmp_path / "nope"))


def test_imagenet_class_names_are_the_standard_order(tmp_path):
    names = class_names.read_class_names("imagenet")
    assert len(names) == len(set(names)) == 1000
    # Indices every ImageNet model shares (Keras' imagenet_class_index.json has the same).
    assert names[0] == "n01440764 tench, Tinca tinca"
    assert names[285] == "n02124075 Egyptian cat"
    assert names[967] == "n07920052 espresso"
    path = tmp_path / "names.txt"
    path.write_text("cat\n\ndog\n")
    assert class_names.read_class_names(str(path)) == ["cat", "dog"]
    with pytest.raises(FileNotFoundError, match="imagenet"):
        class_names.read_class_names(str(tmp_path / "missing.txt"))
