"""tfsd.serving.warmup: the warm-up file of an export is TF Serving's format and replays.

Read from the shared `tiny_export` (the folded export of `tiny_run`, written by
`tfsd.serving.saved_model.export_run`: its warm-up images are the run's eval images).
"""

import os

import numpy as np
import tensorflow as tf

import tfsd
from tfsd import data as data_lib
from tfsd.serving import saved_model as saved_model_lib
from tfsd.serving import signatures as signatures_lib
from tfsd.serving import warmup as warmup_lib
from tfsd.training import run_dir


def test_warmup_records_are_prediction_logs_that_replay(tiny_run, tiny_export):
    """Reference: the run's unfolded Keras model (EMA weights, as exported) on each request, the
    encoded ones through the run's eval preprocessing run eagerly."""
    from tensorflow_serving.apis import prediction_log_pb2

    path = str(tiny_export)
    model = tfsd.restore(str(tiny_run.model_dir))
    config = run_dir.load_run_config(str(tiny_run.model_dir))
    size = int(config.model.image_size)
    preprocess = data_lib.make_eval_image_fn(config.data, size)
    records = list(tf.data.TFRecordDataset(os.path.join(path, warmup_lib.WARMUP_FILE)))
    assert 0 < len(records) <= 1000
    loaded = tf.saved_model.load(path)
    seen = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        sig = request.model_spec.signature_name
        assert request.model_spec.name == "base"  # the export base's name: the default
        inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
        (key, value), = inputs.items()  # fmt: skip
        assert key == signatures_lib.INPUT_KEYS[sig]
        seen.add((sig, len(value)))
        if sig == "serving_bytes":  # representative content: real decodable images, not zeros
            decoded = tf.io.decode_jpeg(value[0]).numpy()
            assert decoded.shape == (size, size, 3) and decoded.std() > 10
        out = loaded.signatures[sig](**{key: tf.constant(value)})
        if sig == "serving_default":
            images = value
        else:
            blobs = value
            if sig == "serving_examples":
                blobs = [tf.io.parse_single_example(e, {"image/encoded": tf.io.FixedLenFeature(
                    [], tf.string)})["image/encoded"].numpy() for e in value]  # fmt: skip
            images = np.stack([preprocess(tf.constant(b)).numpy() for b in blobs])
        ref = model(tf.constant(images, tf.float32), training=False).numpy()
        assert saved_model_lib.relative_error(out["logits"], ref) <= 1e-5, sig
    # export_run asks for batch 1 and one eval batch (8 images of tiny_run's eval split).
    assert seen == {(s, n) for s in signatures_lib.SIGNATURES for n in (1, 8)}
