"""A checkpoint whose input normalisation differs from the freshly built model's is served with
the checkpoint's statistics everywhere a run is restored (`tfsd.models.refresh_normalization`).

Keras' Normalization copies its mean/variance variables into constants in ``finalize_state()``
(keras/src/layers/preprocessing/normalization.py); checkpoint restore and the EMA assign change
the variables only. The trigger in practice: fine-tuning a model from an import that set other
statistics (ImageNet's into a CIFAR ResNet). Before the fix restore_run served the build's
statistics, the folded export refused ("folded model differs"), evaluate and predict reported the
stale model: every check below failed on the old code (tfsd 362955b).

The restore paths are the libraries behind the commands, called in-process: `restore_run`,
`export_run` (tfsd-export, folded by default) + `predict_export` (its serving_bytes signature),
`evaluate_run` (tfsd-evaluate), `predict_run` (tfsd-predict).
"""

import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfsd import data as data_lib
from tfsd import models
from tfsd.serving import predict as predict_lib
from tfsd.serving import saved_model
from tfsd.training import evaluation, run_dir
from tfsd.training import task as task_lib

# Statistics far from CIFAR-10's (the tiny run's), so that stale use shows.
MEAN = np.asarray([0.2, 0.5, 0.8], "float32")
STD = np.asarray([0.1, 0.3, 0.6], "float32")


@pytest.fixture(scope="module")
def retuned(tiny_run, tmp_path_factory):
    """A copy of tiny_run whose latest checkpoint (raw and EMA) holds MEAN / STD."""
    run = tmp_path_factory.mktemp("retuned") / "run"
    shutil.copytree(tiny_run.model_dir, run)
    model, config, _, _ = run_dir.restore_run(str(run))
    norm = model.get_layer("normalization")
    norm.adapt_mean.assign(MEAN)
    norm.adapt_variance.assign(np.square(STD))
    ema = task_lib.EMA(model, 0.5)  # its shadows: these weights, new statistics included
    checkpoint = tf.train.Checkpoint(model=model, ema=ema.shadows)
    manager = tf.train.CheckpointManager(checkpoint, run_dir.checkpoint_dir(str(run)), 10)
    manager.save(checkpoint_number=99)
    norm.finalize_state()  # the model as it really computes with these weights

    paths = sorted(str(p) for p in tiny_run.images.glob("*/*"))[::12][:4]
    size = int(config.model.image_size)
    preprocess = data_lib.make_eval_image_fn(config.data, size)
    images = tf.stack([preprocess(tf.io.read_file(p)) for p in paths])
    expected = np.asarray(model(images, training=False))
    stale = keras.models.clone_model(model)  # a fresh Normalization: the build's statistics
    stale.set_weights(model.get_weights())
    # The test has power: the build's statistics give clearly different logits.
    assert np.abs(np.asarray(stale(images, training=False)) - expected).max() > 0.05
    return run, model, config, paths, expected


def _probabilities(logits):
    return np.asarray(tf.nn.softmax(logits, axis=-1))


def _check_top(predictions, expected_logits, names):
    probabilities = _probabilities(expected_logits)
    for top, p in zip(predictions, probabilities, strict=True):
        order = np.argsort(-p, kind="stable")[: len(top)]
        assert [name for name, _ in top] == [names[c] for c in order]
        np.testing.assert_allclose([s for _, s in top], p[order], atol=1e-4)


def test_restore_run_uses_the_checkpoint_statistics(retuned):
    run, _, config, paths, expected = retuned
    model, *_ = run_dir.restore_run(str(run))
    preprocess = data_lib.make_eval_image_fn(config.data, int(config.model.image_size))
    images = tf.stack([preprocess(tf.io.read_file(p)) for p in paths])
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, atol=1e-4)
    np.testing.assert_allclose(model.get_layer("normalization").mean.numpy().reshape(-1), MEAN)


def test_folded_export_serves_the_checkpoint_statistics(retuned, tmp_path):
    run, _, _, paths, expected = retuned
    export_dir = saved_model.export_run(str(run), str(tmp_path / "export"))  # fold=True
    predictions = predict_lib.predict_export(export_dir, paths, top_k=3)
    _check_top(predictions, expected, ["blue", "green", "red"])


def test_evaluate_and_predict_use_the_checkpoint_statistics(retuned, tmp_path):
    run, model, config, paths, expected = retuned
    result = evaluation.evaluate_run(str(run), output_dir=str(tmp_path / "eval"))
    data = config.data.copy_and_resolve_references()
    data.eval_drop_remainder = False
    size = int(config.model.image_size)
    dataset = data_lib.build_dataset(data, split="eval", global_batch_size=64, image_size=size)
    want = evaluation.evaluate_model(model, dataset, int(model.outputs[0].shape[-1]))
    assert result["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-5)

    predictions = predict_lib.predict_run(str(run), paths, top_k=3)
    _check_top(predictions, expected, ["blue", "green", "red"])


def test_ema_swap_switches_the_statistics_in_use():
    """The EMA swap (eval with EMA weights during training) exchanges Normalization variables
    too; the model must then use them, and the raw ones again after the swap back."""

    model = models.create_model("test_resnet", num_classes=3, input_shape=(16, 16, 3))
    ema = task_lib.EMA(model, 0.9)
    norm = model.get_layer("normalization")
    paths = {norm.adapt_mean.path: MEAN, norm.adapt_variance.path: np.square(STD)}
    for shadow, source in zip(ema.shadows, ema.sources, strict=True):
        if source.path in paths:
            shadow.assign(paths[source.path])
    images = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    raw = np.asarray(model(images, training=False))
    ema.swap()
    swapped = np.asarray(model(images, training=False))
    norm.finalize_state()  # what the model computes with the variables it now holds
    np.testing.assert_allclose(swapped, np.asarray(model(images, training=False)), atol=1e-6)
    assert np.abs(swapped - raw).max() > 0.05
    ema.swap()
    np.testing.assert_allclose(np.asarray(model(images, training=False)), raw, atol=1e-6)
