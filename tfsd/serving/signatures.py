"""The servable: one inference model behind three TF Serving signatures.

``serving_default`` (float32 images ``[B, H, W, 3]`` in [0, 255]), ``serving_bytes`` (encoded
images through the run's eval preprocessing, `tfsd.data.make_eval_image_fn`) and
``serving_examples`` (serialized ``tf.train.Example`` with ``image/encoded``); each returns
``logits``, ``probabilities``, top-k ``classes`` and ``scores`` (and ``class_names``), and per
example ``valid`` and ``error``: an encoded image that is refused (over the size limits) or does
not decode fails only its own row, never the request or a batch TF Serving merged it into
(`tfsd.serving.image_limits`). Model Garden's vision export (``official/vision/serving``) was the
starting point. See ``docs/serving.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

from tfsd import data as data_lib
from tfsd.serving import image_limits
from tfsd.serving.image_limits import ImageLimits

SIGNATURES = ("serving_default", "serving_bytes", "serving_examples")


# Input key of each signature (REST: {"instances": [...]} rows map to the single input).
INPUT_KEYS = {"serving_default": "images", "serving_bytes": "image_bytes",
              "serving_examples": "examples"}  # fmt: skip


MAX_TOP_K = 5


def model_image_size(model: keras.Model) -> tuple[int, int]:
    shape = model.inputs[0].shape if getattr(model, "inputs", None) else None
    if shape is None or len(shape) != 4 or shape[-1] != 3 or None in shape[1:3]:
        raise ValueError(
            f"The model must take images [batch, H, W, 3] with a fixed H and W to be exported; "
            f"its input shape is {shape}."
        )
    return int(shape[1]), int(shape[2])


def preprocess_fn(mode: str, image_size: int) -> Callable[[tf.Tensor], tf.Tensor]:
    """An eval preprocessing by name (``inception`` | ``cifar`` | ``none``), for a bare model.

    The same `tfsd.data.make_eval_image_fn` a run uses, resolved for a data-less source: a run's
    export takes its dataset's own preprocessing instead.
    """
    if mode not in ("inception", "cifar", "none"):
        raise ValueError(f"preprocess must be 'inception', 'cifar' or 'none', got {mode!r}.")
    # The synthetic source reads no data; only the preprocessing mode matters here.
    return data_lib.make_eval_image_fn({"name": "synthetic", "preprocess": mode}, image_size)


class Servable:
    """The three signature functions over one inference model."""

    def __init__(
        self,
        model: keras.Model,
        preprocess: Callable[[tf.Tensor], tf.Tensor],
        class_names: Sequence[str] | None,
        limits: ImageLimits | None = None,
    ):
        self.model = model
        self.limits = (limits or ImageLimits()).check()
        self.height, self.width = model_image_size(model)
        self.preprocess = preprocess
        num_classes = int(model.outputs[0].shape[-1])
        if class_names is not None:
            class_names = [str(c) for c in class_names]
            if len(class_names) != num_classes:
                raise ValueError(
                    f"{len(class_names)} class names for a model with {num_classes} outputs."
                )
        self.class_names = class_names
        self.top_k = min(MAX_TOP_K, num_classes)

    def outputs(self, images: tf.Tensor, status: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
        """The model's answers; rows whose ``status`` is not OK answer nothing (see below)."""
        logits = tf.cast(self.model(images, training=False), tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1)
        scores, classes = tf.math.top_k(probabilities, k=self.top_k)
        classes = tf.cast(classes, tf.int32)
        out = {"logits": logits, "probabilities": probabilities, "classes": classes,
               "scores": scores}  # fmt: skip
        if self.class_names is not None:
            # Names of the top-k classes, [batch, k] like `classes`.
            out["class_names"] = tf.gather(tf.constant(self.class_names), classes)
        if status is None:
            # Float images: nothing to refuse. The model's outputs stay untouched, so the TFLite
            # conversion of serving_default (logits, probabilities only) has no extra op.
            batch = tf.shape(images)[:1]
            return {**out, "valid": tf.fill(batch, True), "error": tf.fill(batch, "")}
        valid = tf.equal(status, image_limits.OK)
        # A refused row: logits, probabilities and scores 0, classes -1, names "": no plausible
        # answer for a client that ignores `valid`. Every output keeps the batch dimension, as TF
        # Serving's REST row format ("instances") and its batching (SplitOutputTensors) require.
        row = valid[:, None]
        masked = {
            "logits": tf.where(row, logits, 0.0),
            "probabilities": tf.where(row, probabilities, 0.0),
            "classes": tf.where(row, classes, -1),
            "scores": tf.where(row, scores, 0.0),
            "valid": valid,
            "error": tf.gather(tf.constant(self.limits.messages()), status),
        }
        if self.class_names is not None:
            masked["class_names"] = tf.where(row, out["class_names"], "")
        return masked

    def decode(self, inputs: tf.Tensor, to_image_bytes=tf.identity) -> tuple[tf.Tensor, tf.Tensor]:
        # Per example and bounded: never raises for a bad image (tfsd.serving.image_limits).
        images, _, status = image_limits.decode_batch(
            inputs, to_image_bytes, self.preprocess, (self.height, self.width, 3), self.limits
        )
        return images, status

    def serving_default(self, images):
        return self.outputs(images)

    def serving_bytes(self, image_bytes):
        return self.outputs(*self.decode(image_bytes))

    def serving_examples(self, examples):
        def image_bytes(example):
            spec = {"image/encoded": tf.io.FixedLenFeature([], tf.string)}
            return tf.io.parse_single_example(example, spec)["image/encoded"]

        return self.outputs(*self.decode(examples, image_bytes))

    def input_signatures(self) -> dict[str, list[tf.TensorSpec]]:
        return {
            "serving_default": [
                tf.TensorSpec([None, self.height, self.width, 3], tf.float32, name="images")
            ],
            "serving_bytes": [tf.TensorSpec([None], tf.string, name="image_bytes")],
            "serving_examples": [tf.TensorSpec([None], tf.string, name="examples")],
        }


def write_saved_model(servable: Servable, path: str) -> None:
    """Writes the servable's three signatures and the model's variables as a SavedModel.

    The object graph is the one `keras.export.ExportArchive` writes (Keras 3's SavedModel writer,
    keras/src/export/saved_model_export_archive.py): a root holding ``variables``,
    ``trainable_variables`` and ``non_trainable_variables`` (what `keras.layers.TFSMLayer` and
    ``tf.saved_model.load`` users read) and each endpoint, a ``tf.function`` with its input
    signature, registered as the signature of its name. It is written here directly because
    ExportArchive traces every endpoint twice: once outside the save to list the variables it
    uses (``_filter_and_track_resources``), then again inside ``tf.saved_model.save``, whose
    save context's variable policy is part of tf.function's cache key
    (tensorflow/python/eager/polymorphic_function/function_context.py,
    ``make_function_context``), so the first trace is never reused. Here each endpoint is traced
    once, by the save. Measured 2026-12-05 on the registered test_resnet: 3 traces instead of 6.
    tfsd's models hold no lookup tables or other TrackableResources, the other thing
    ExportArchive collects.
    """
    model = servable.model
    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = list(model.variables)
    root.trainable_variables = list(model.trainable_variables)
    root.non_trainable_variables = list(model.non_trainable_variables)
    # The tf.Variables behind Keras 3's variables, tracked as themselves (ExportArchive's
    # ``_all_variables``): without them the TF1 loader of TF Serving and saved_model_cli finds no
    # resource for a captured variable ("Resource .../beta does not exist"; caught by
    # tests/test_saved_model.py::test_saved_model_cli_shows_documented_signatures_and_runs).
    root._all_variables = [v.value for v in model.variables]
    endpoints = {}
    for name, spec in servable.input_signatures().items():
        # autograph=False as in ExportArchive: the signature code uses tf ops only.
        endpoints[name] = tf.function(getattr(servable, name), input_signature=spec,
                                      autograph=False)  # fmt: skip
        setattr(root, name, endpoints[name])
    # No gradient functions: tf.saved_model.save traces the registered gradient of every op type
    # in the serving graphs (save.py, _trace_gradient_functions) so that a loaded model could be
    # differentiated through custom gradients; a serving export is never trained, and skipping it
    # cut the CPU time of exporting the registered test_resnet from 5.3 s to 3.8 s (2026-12-05).
    options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
    tf.saved_model.save(root, path, signatures=endpoints, options=options)
