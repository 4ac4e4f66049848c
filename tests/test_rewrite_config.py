"""keras.applications architectures from configs: ``model.name=keras_applications/NAME``."""

import json
from pathlib import Path

import keras
import pytest
import tensorflow as tf

from tfsd import config_names, models
from tfsd import layers as sdl
from tfsd.models import keras_applications


def test_registered_and_config_resolves():
    names = [n for n in models.list_models() if n.startswith(keras_applications.PREFIX)]
    assert len(names) == len(keras_applications.ARCHITECTURES) == 8
    c = config_names.load_config("keras_applications_ResNet50:runlocal")
    assert c.model.name == "keras_applications/ResNet50"
    assert (c.model.survival_prob, c.model.sd_mode, c.model.sd_scale_at) == (0.5, "batch", "train")
    assert c.model.image_size == 32 and c.data.name == "synthetic"
    assert models.get_model_info("keras_applications/ResNet50").num_sd_blocks == 16
    with pytest.raises(ValueError, match="Did you mean: ResNet50"):
        config_names.load_config("keras_applications:ResNet05")


def test_create_model_p1_has_no_stochastic_depth_or_drop_connect():
    # keras.applications' EfficientNetB0 has 9 drop-connect Dropouts; at p = 1 none is left.
    model = models.create_model(
        "keras_applications/EfficientNetB0", num_classes=3, input_shape=(32, 32, 3)
    )
    assert not sdl.stochastic_depth_layers(model)
    dropouts = [x.name for x in model._flatten_layers() if isinstance(x, keras.layers.Dropout)]
    assert dropouts == ["top_dropout"]  # the head's dropout stays
    assert model.name == "keras_applications_EfficientNetB0"


def _serving_default_op_types(path: Path) -> set[str]:
    """Op types of the export's ``serving_default`` (the model on a float tensor, no decoding:
    the image signatures' bounded decoding has its own conditionals), nested functions too."""
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    graph_def = fn.graph.as_graph_def()
    types = {n.op for n in graph_def.node}
    types.update(n.op for f in graph_def.library.function for n in f.node_def)
    return types


@pytest.mark.e2e
def test_config_trains_exports_and_converts(tmp_path):
    """keras_applications_MobileNetV2:runlocal, 2 steps, then the folded export and TFLite."""
    from tfsd.serving import saved_model, tflite_export
    from tfsd.training import loop

    c = config_names.load_config("keras_applications_MobileNetV2:runlocal")
    c.model.survival_prob = 0.5  # batch-wise skipping in the 10 rewritten blocks
    c.batch_size = 8
    c.total_steps = 2
    c.steps_per_loop = 2
    c.checkpoint_every_steps = 2
    c.eval_steps = 1
    c.data.synthetic_train_size = 64
    c.data.synthetic_eval_size = 16
    result = loop.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["step"] == 2
    version = Path(saved_model.export_run(str(tmp_path / "run"), str(tmp_path / "export")))
    ops = _serving_default_op_types(version)
    assert "Conv2D" in ops  # the model's graph was walked
    # Folded: no gate draw, no tf.cond around a branch, nothing of tfsd's stochastic depth.
    assert not [t for t in ops if "Random" in t or t in ("If", "StatelessIf", "Case")]
    out = tmp_path / "m.tflite"
    report = tflite_export.convert_and_verify(
        str(version),
        str(out),
        model_dir=str(tmp_path / "run"),
        calibration_steps=0,
        verify_images=8,
    )
    assert out.is_file() and report["top1_agreement"] == 1.0
    assert json.loads(Path(tflite_export.report_path(str(out))).read_text())
