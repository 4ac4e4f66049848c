"""One of N exporters racing to publish into one export base (tests/test_gcs_publish.py).

``python -m tests.export_race_child SAVED_MODEL BARRIER N BASE...``: for each ``BASE`` in turn,
stages the finished SavedModel ``SAVED_MODEL`` as an export's temporary directory in ``BASE``
(what `tfsd.serving.saved_model.export_saved_model` has written and verified when it publishes),
tells ``BARRIER/<i>`` (the i-th base) it is ready, waits until all ``N`` exporters are, then
publishes it with `publish.publish_version` and writes ``models.config``, as
``export_saved_model`` does. The N publications start together: the race several pipelines
exporting at once have. Prints one ``RESULT {json}`` line with the published directories (one
process serves several bases to pay TensorFlow's import once).
"""

import json
import os
import sys
import time
import uuid

import tensorflow as tf

from tfsd.serving import publish

WAIT_S = 120.0


def publish_once(base: str, saved_model: str, barrier: str, n: int) -> str:
    tmp_dir = os.path.join(base, f"{publish.TMP_PREFIX}{uuid.uuid4().hex}")
    for dirpath, _, filenames in tf.io.gfile.walk(saved_model):
        for name in filenames:
            src = os.path.join(dirpath, name)
            dst = os.path.join(tmp_dir, os.path.relpath(src, saved_model))
            tf.io.gfile.makedirs(os.path.dirname(dst))
            tf.io.gfile.copy(src, dst)
    os.makedirs(barrier, exist_ok=True)
    open(os.path.join(barrier, f"ready-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + WAIT_S
    while len(os.listdir(barrier)) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {os.listdir(barrier)} of {n} exporters got ready")
        time.sleep(0.005)
    try:
        final_dir = publish.publish_version(tmp_dir, base, None)
    finally:
        if tf.io.gfile.exists(tmp_dir):
            tf.io.gfile.rmtree(tmp_dir)
    publish.write_models_config(base, os.path.basename(base))
    return final_dir


def main(saved_model: str, barrier: str, n: int, bases: list[str]) -> None:
    dirs = [
        publish_once(base, saved_model, os.path.join(barrier, str(i)), n)
        for i, base in enumerate(bases)
    ]
    print("RESULT " + json.dumps({"dirs": dirs}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:])
