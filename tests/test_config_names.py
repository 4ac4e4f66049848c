"""Config names (`tfsd.config_names`): resolution, listing, family variants, the published
recipes, and every config validating and building under ``runlocal``."""

import numpy as np
import pytest
import tensorflow as tf

from tfsd import config_lib, config_names, models
from tfsd import data as data_lib
from tfsd.models import keras_applications
from tfsd.training import task as task_lib

# runlocal modes that train on real data prepared offline (tests/test_fashion_mnist.py); every
# other runlocal mode uses the synthetic data.
REAL_DATA_RUNLOCAL = {"fashion_mnist_resnet20", "fashion_mnist_resnet56", "fashion_mnist_resnet110",
                      "finetune_efficientnet_lite0"}  # fmt: skip


def test_every_config_resolves_and_validates():
    names = config_names.available_configs()
    expected = {f"efficientnet_b{i}" for i in range(8)} | {
        "efficientnet_lite0", "resnet50", "resnet101", "resnet152",
        "cifar10_resnet110", "cifar100_resnet110", "svhn_resnet152",
    }  # fmt: skip
    assert expected <= set(names)
    for name in names:
        for spec in (name, f"{name}:runlocal"):
            c = config_names.load_config(spec)
            config_lib.validate(c)
            assert c.model.name
        local = config_names.load_config(f"{name}:runlocal").data
        if name in REAL_DATA_RUNLOCAL:
            assert (local.name, local.accept_checksums) == ("fashion_mnist", True)
            assert local.source_dir == "/usr/share/datasets/fashion-mnist"
        else:
            assert local.name == "synthetic"
    path = config_names.resolve_config_path("efficientnet_b0:runlocal")
    assert path.endswith("configs/efficientnet.py:b0,runlocal")  # the family file (see below)


def test_unknown_config_names_close_matches():
    with pytest.raises(ValueError, match="cifar10_resnet110"):
        config_names.resolve_config_path("cifar10_resnet11")
    with pytest.raises(ValueError, match="runlocal"):
        config_names.load_config("efficientnet_b0:fast")


# Native resolution of every EfficientNet variant: B0-B7 from Tan & Le 2019 (Table 1 scaling),
# Lite0-4 from the TF EfficientNet-Lite reference (efficientnet_lite_builder.py). Written out here,
# independently of the model registry the configs read them from.
EFFICIENTNET_RESOLUTIONS = {
    "b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600,
    "lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300,
}  # fmt: skip


def test_available_configs_are_the_files_and_the_efficientnet_family_variants():
    """Exactly these names: a family file lists its variants, other files their own name.

    Caught while writing it: absl's config loader reuses one module object for every file, so
    ``VARIANTS`` of configs/efficientnet.py leaked into the files loaded after it and
    ``resnet50_b0`` … appeared as configs.
    """
    files = {"cifar10_resnet110", "cifar100_resnet110", "svhn_resnet152", "resnet50",
             "resnet101", "resnet152", "finetune_efficientnet_b0",
             "finetune_efficientnet_lite0"}  # fmt: skip
    family = {f"efficientnet_{v}" for v in EFFICIENTNET_RESOLUTIONS}
    fashion = {f"fashion_mnist_resnet{d}" for d in (20, 56, 110)}
    applications = {f"keras_applications_{a}" for a in keras_applications.ARCHITECTURES}
    assert set(config_names.available_configs()) == files | family | fashion | applications


@pytest.mark.parametrize(
    "model_name", [n for n in models.list_models() if n.startswith("efficientnet_")]
)
def test_every_efficientnet_variant_resolves_by_name(model_name):
    """Every registry variant is a config by its name, through the one family file."""
    variant = model_name.removeprefix("efficientnet_")
    c = config_names.load_config(model_name)
    assert c.model.name == model_name
    assert c.model.image_size == EFFICIENTNET_RESOLUTIONS[variant]
    assert c.model.image_size == models.get_model_info(model_name).input_size[0]
    assert (c.model.survival_prob, c.model.sd_mode, c.model.sd_scale_at) == (0.8, "sample", "train")
    assert c.data.name == "imagenet2012" and c.optimizer.name == "rmsprop"
    # The family file's own spelling gives the same config.
    assert config_names.load_config(f"efficientnet:{variant}").to_dict() == c.to_dict()
    local = config_names.load_config(f"{model_name}:runlocal")
    assert local.to_dict() == config_names.load_config(f"efficientnet:{variant},runlocal").to_dict()
    assert (local.model.name, local.model.image_size, local.data.name) == (
        model_name, 32, "synthetic"
    )  # fmt: skip
    assert config_names.resolve_config_path(f"{model_name}:runlocal").endswith(
        f"configs/efficientnet.py:{variant},runlocal"
    )


def test_bad_efficientnet_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"no variant 'b9'.*efficientnet_b0.*efficientnet_lite4"):
        config_names.resolve_config_path("efficientnet_b9:runlocal")
    with pytest.raises(ValueError, match=r"variant 'b9'.*Did you mean.*b0, b1.*lite4"):
        config_names.load_config("efficientnet:b9")
    with pytest.raises(ValueError, match=r"variant ''.*b0.*lite4"):
        config_names.load_config("efficientnet")  # the family needs its variant
    with pytest.raises(ValueError, match=r"'fast'.*runlocal"):
        config_names.load_config("efficientnet:lite2,fast")


def test_published_recipes():
    """Reference: the papers' recipes as the config docstrings cite them (hand-copied)."""
    b0 = config_names.load_config("efficientnet_b0")
    assert (b0.optimizer.name, b0.optimizer.rho, b0.optimizer.momentum) == ("rmsprop", 0.9, 0.9)
    assert b0.optimizer.epsilon == 1e-3 and b0.optimizer.weight_decay == 1e-5
    assert b0.lr.base == 0.016 and b0.lr.scale_by_batch and b0.lr.warmup_epochs == 5
    assert (b0.lr.decay_rate, b0.lr.decay_epochs) == (0.97, 2.4)
    assert b0.label_smoothing == 0.1 and b0.ema_decay == 0.9999 and b0.num_epochs == 350
    assert (b0.model.survival_prob, b0.model.sd_mode) == (0.8, "sample")
    c10 = config_names.load_config("cifar10_resnet110")
    assert c10.optimizer.nesterov and c10.lr.base == 0.1 and c10.batch_size == 128
    assert tuple(c10.lr.step_boundaries) == (0.5, 0.75) and c10.num_epochs == 500
    assert (c10.model.survival_prob, c10.model.sd_mode) == (0.5, "batch")
    assert c10.optimizer.weight_decay == 1e-4


# The keras_applications family file builds every architecture the same way (tested for all six
# in tests/test_rewrite_apps.py): two of its eight variants here keep the default tier short.
RUNLOCAL_BUILDS = sorted(
    n
    for n in config_names.available_configs()
    if not n.startswith("keras_applications_")
    or n in ("keras_applications_ResNet50", "keras_applications_MobileNetV2")
)


@pytest.mark.parametrize("name", RUNLOCAL_BUILDS)
def test_every_config_builds_model_and_pipeline_under_runlocal(name):
    """Each config's own (shrunk) model and data pipeline, as ``runlocal`` trains them."""
    c = config_names.load_config(f"{name}:runlocal")
    if name in REAL_DATA_RUNLOCAL:  # the model here; the real data in tests/test_fashion_mnist.py
        c.data.name, c.data.source_dir, c.data.accept_checksums = "synthetic", "", False
        c.data.cache = False
    c.data.synthetic_train_size = 64
    c.data.synthetic_eval_size = 16
    c.batch_size = 8
    task = task_lib.build_task(c, None)
    ds = data_lib.build_dataset(c.data, split="train", global_batch_size=8,
                                image_size=c.model.image_size, seed=0)  # fmt: skip
    images, labels = next(iter(ds))
    assert images.shape == (8, c.model.image_size, c.model.image_size, 3)
    logits = task.model(images, training=False)
    assert logits.shape == (8, 10) and logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))
    assert task.model.name == c.model.name.replace("/", "_")  # Keras names take no "/"
