"""Small shared test helpers."""

import contextlib
import io
import struct
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from absl.testing import flagsaver

from tfsd import config_names


def randomize_batchnorm(model: keras.Model, seed: int = 0) -> None:
    """Gives every BatchNormalization non-trivial gamma, beta and moving statistics.

    Freshly built models have gamma 1 and beta 0, which would hide folding and export errors.
    """
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            for v in (layer.gamma, layer.beta, layer.moving_mean):
                v.assign(rng.normal(0, 0.5, v.shape).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))


def sgd_step(model: keras.Model, jit_compile: bool, from_logits: bool = True) -> Callable:
    """One SGD(0.01) training step of ``model`` under tf.function: ``step(x, y)`` returns
    (mean sparse cross-entropy, the trainable variables' gradient norms)."""
    opt = keras.optimizers.SGD(0.01)
    variables = model.trainable_variables

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=from_logits)
            )
        grads = tape.gradient(loss, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss, [tf.norm(g) for g in grads]

    return step


def op_types(fn: Callable, *specs: tf.TensorSpec) -> set[str]:
    """Op types of the graph ``tf.function(fn)`` traces for ``specs``, nested functions included."""
    graph = tf.function(fn).get_concrete_function(*specs).graph
    types = set()
    graphs = [graph.as_graph_def()]
    for graph_def in graphs:
        types.update(node.op for node in graph_def.node)
        types.update(n.op for f in graph_def.library.function for n in f.node_def)
    return types


def tiny_config(**changes):
    """cifar10_resnet110:runlocal shrunk to the registered ``test_resnet`` (a CIFAR ResNet-8,
    one stochastic-depth block per stage, width 0.25) at 16×16, for tests of the loop itself."""

    c = config_names.load_config("cifar10_resnet110:runlocal")
    c.model.name = "test_resnet"
    c.model.overrides.width = 0.25
    c.model.image_size = 16
    c.data.synthetic_train_size = 256
    c.data.synthetic_eval_size = 64
    c.batch_size = 16
    c.steps_per_loop = 2
    c.checkpoint_every_steps = 4
    c.total_steps = 4
    return apply_changes(c, changes)


def apply_changes(c, changes: dict):
    """Sets dotted config fields (``{"model.sync_bn": "on"}``) in place; returns ``c``."""
    for key, value in changes.items():
        node = c
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return c


def write_image_folder(root, classes=("red", "green", "blue"), per_class=16, size=24, seed=0):
    """A ``folder:`` dataset of PNG and JPEG files, one sub-folder per class.

    Class ``i`` is noise around a colour whose channel ``i % 3`` is bright, so a small network
    learns it in a few dozen steps; sizes vary by a few pixels, as real photos do.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            h, w = size + int(rng.integers(0, 5)), size + int(rng.integers(0, 5))
            image = rng.normal(90.0, 30.0, (h, w, 3))
            image[..., label % 3] += 110.0
            image = tf.constant(np.clip(image, 0, 255).astype(np.uint8))
            if i % 2:
                tf.io.write_file(
                    str(root / name / f"{i}.jpg"), tf.io.encode_jpeg(image, quality=95)
                )
            else:
                tf.io.write_file(str(root / name / f"{i}.png"), tf.io.encode_png(image))
    return root


def run_cli(command, *args: str) -> tuple[int, str, str]:
    """Runs a tfsd command's ``run_main`` in this process: ``(exit code, stdout, stderr)``.

    Flags are defined when a command runs (tfsd.cli), so a command runs in-process as often as
    needed; ``flagsaver`` restores absl's flag values afterwards. ``command`` is the module
    (``tfsd.export``). A ``sys.exit("message")`` is exit code 1 with the message on stderr, as
    the interpreter would report it.
    """
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with flagsaver.flagsaver(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            command.run_main([command.__name__, *args])
        except SystemExit as e:
            if isinstance(e.code, str):
                err.write(e.code + "\n")
                code = 1
            else:
                code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def png_of_zeros(width: int, height: int, rows_per_block: int = 200) -> bytes:
    """A black RGB PNG of any size, a few hundred KiB, made without holding its pixels.

    The pixel data is one deflate block of ``rows_per_block`` zero rows, ended by a full flush
    (which resets the compressor, so the same rows compress to the same bytes), repeated.
    """
    row = b"\0" * (1 + 3 * width)  # filter byte 0, then RGB
    assert height % rows_per_block == 0
    rows = row * rows_per_block
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate: zlib header added below
    block = compressor.compress(rows) + compressor.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(height // rows_per_block):
        adler = zlib.adler32(rows, adler)
    idat = b"\x78\xda" + block * (height // rows_per_block) + compressor.flush()
    idat += struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


# `python -m tfsd.train` once per argv of the JSON list argv[1], in one fresh process (the command
# in-process, as tests/test_train.py runs it): one interpreter start instead of one per run.
# Used as ``[sys.executable, "-c", TRAIN_RUNS_CHILD, json.dumps(list_of_argvs)]``.
TRAIN_RUNS_CHILD = """
import json, sys
from absl import logging
from tests.helpers import run_cli
from tfsd import train
logging.set_verbosity("info")
for argv in json.loads(sys.argv[1]):
    code, out, err = run_cli(train, *argv)
    sys.stdout.write(out)
    sys.stderr.write(err)
    if code:
        sys.exit(code)
"""


def wait_for(predicate, proc, timeout: float, poll: float = 0.05) -> bool:
    """Polls ``predicate`` every ``poll`` s until it holds (True), ``proc`` exits (its last
    answer) or ``timeout`` s pass (False): the bounded wait of the kill/resume tests."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return predicate()
        time.sleep(poll)
    return False


def latest_step(model_dir: str) -> int | None:
    """The step of a run's latest checkpoint (local or gs://), None before the first."""
    state = tf.train.get_checkpoint_state(f"{model_dir}/checkpoints")
    return None if state is None else int(state.model_checkpoint_path.rsplit("-", 1)[1])
