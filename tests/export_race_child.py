"""One of N exporters racing to publish into one export base (tests/test_gcs_publish.py).

``python -m tests.export_race_child BASE SEED BARRIER N``: exports a ``test_resnet`` with weights
from ``SEED`` through `tfsd.serving.saved_model.export_saved_model`. After its export is written
and verified, the exporter announces itself in ``BARRIER`` and waits until all ``N`` have, so the
N publications start together (the race a real deployment has when several pipelines export at
once). Prints one ``RESULT {json}`` line: the published directory and the logits its model gives
on a fixed batch, to check that the version holds this exporter's model.
"""

import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from tests.helpers import randomize_batchnorm
from tfsd import models
from tfsd.serving import saved_model

WAIT_S = 180.0


def images() -> np.ndarray:
    return np.asarray(tf.random.stateless_uniform([4, 16, 16, 3], seed=[1, 2], maxval=255.0))


def main(base: str, seed: int, barrier: str, n: int) -> None:
    keras.utils.set_random_seed(seed)
    model = models.create_model("test_resnet", num_classes=10, survival_prob=0.5)
    randomize_batchnorm(model, seed=seed)
    real_verify = saved_model.verify_export

    def verify_then_wait(*args, **kwargs):
        result = real_verify(*args, **kwargs)
        open(os.path.join(barrier, f"ready-{seed}"), "w").close()
        deadline = time.monotonic() + WAIT_S
        while len(os.listdir(barrier)) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {os.listdir(barrier)} of {n} exporters got ready")
            time.sleep(0.01)
        return result

    saved_model.verify_export = verify_then_wait
    sample = images()
    final_dir = saved_model.export_saved_model(
        model, base, preprocess="none", sample_images=np.concatenate([sample, sample])
    )
    logits = np.asarray(model(sample, training=False)).tolist()
    print("RESULT " + json.dumps({"dir": final_dir, "logits": logits}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
