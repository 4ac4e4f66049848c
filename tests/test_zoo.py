"""Registered models under the mixed-precision policies: builds, runs, float32 logits.

Every tfsd model under mixed_bfloat16 and (but for the EfficientNets between the smallest and
the deepest of each family) mixed_float16; three rewritten keras.applications models under
mixed_bfloat16. The full-size EfficientNet builds here also carry test_efficientnet's
per-variant checks (`check_variant`).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.test_efficientnet import PARAMS as EFFICIENTNET_PARAMS
from tests.test_efficientnet import check_variant
from tfsd import layers as sdl
from tfsd.models import create_model, get_model_info, list_models

# Full-size graphs, slow tier: the deep ResNets (hundreds of blocks even at tiny widths) and every
# EfficientNet, which keeps its own width/depth row here (a full-size model, 4.7-66 M parameters;
# 5-40 s per case on 2 cores). The default tier keeps the shallow ResNets at tiny widths and the
# two registered tiny models.
DEEP_RESNETS = {"cifar_resnet152", "cifar_resnet1202", "resnet101", "resnet152"}


def _is_slow(name):
    return name in DEEP_RESNETS or name.startswith(("efficientnet_", APPLICATIONS))


# keras.applications architectures rewritten by add_stochastic_depth (docs/rewrite.md), built
# with survival 0.5 so every residual block is a stochastic one. Three of the eight, under
# bfloat16 only (its checks are the stricter: every gradient and inference): ResNet101/152 are
# ResNet50's blocks, and test_rewrite_apps covers the structure of all six.
APPLICATIONS = "keras_applications/"
APPLICATION_CASES = {"ResNet50", "EfficientNetB0", "ConvNeXtTiny"}


def _kwargs(name):
    """Tiny widths for ResNets; EfficientNets keep their own width/depth rows at 32×32.

    32×32 is the smallest input every family takes (five stride-2 stages for the ImageNet ones);
    the registered tiny models keep their own widths and input sizes.
    """
    if name in ("test_resnet", "test_efficientnet"):
        return dict(num_classes=5)
    if name.startswith("cifar_resnet"):
        return dict(num_classes=5, width=0.25)
    if name.startswith("resnet"):
        return dict(num_classes=5, width=0.125, input_shape=(32, 32, 3))
    if name.startswith(APPLICATIONS):
        return dict(num_classes=5, input_shape=(32, 32, 3), survival_prob=0.5)
    return dict(num_classes=5, input_shape=(32, 32, 3))


# ResNet-1202 (~18 s a build) is built once, under mixed_bfloat16, in
# test_resnet.test_cifar_resnet1202_full_size; its blocks are cifar_resnet110's, covered here.
BUILT_ELSEWHERE = {"cifar_resnet1202"}

# EfficientNets under mixed_float16: the smallest and the deepest of each family. Every variant is
# the same blocks and the same policy plumbing at another width and depth; float16's own risk,
# overflow, grows with depth (B7: 55 blocks). All 13 run under mixed_bfloat16, whose checks are
# the stricter (every gradient, inference). 2026-12-05: the other nine float16 builds were 31 s
# of CI's slow tier.
FLOAT16_EFFICIENTNETS = {"efficientnet_b0", "efficientnet_b7", "efficientnet_lite0",
                         "efficientnet_lite4"}  # fmt: skip


def _cases():
    for name in list_models():
        if name in BUILT_ELSEWHERE:
            continue
        policies = ("mixed_float16", "mixed_bfloat16")
        if name.startswith("efficientnet_") and name not in FLOAT16_EFFICIENTNETS:
            policies = ("mixed_bfloat16",)
        if name.startswith(APPLICATIONS):
            if name.removeprefix(APPLICATIONS) not in APPLICATION_CASES:
                continue
            policies = ("mixed_bfloat16",)
        for policy in policies:
            marks = [pytest.mark.slow] if _is_slow(name) else []
            yield pytest.param(name, policy, marks=marks, id=f"{name}-{policy}")


def test_every_family_is_covered():
    names = list_models()
    assert any(n.startswith("cifar_resnet") for n in names)
    assert any(n.startswith("resnet") for n in names)
    assert any(n.startswith("efficientnet_b") for n in names)
    assert any(n.startswith("efficientnet_lite") for n in names)
    assert sum(n.startswith(APPLICATIONS) for n in names) == 8
    # 25 tfsd architectures, 8 keras.applications ones and the two registered tiny test models.
    assert len(names) == 35 and {"test_resnet", "test_efficientnet"} <= set(names)
    assert DEEP_RESNETS | BUILT_ELSEWHERE | FLOAT16_EFFICIENTNETS <= set(names)
    # check_variant knows every registered EfficientNet's counts: each full-size build here runs it.
    assert {n for n in names if n.startswith("efficientnet_")} == set(EFFICIENTNET_PARAMS)


@pytest.mark.parametrize("name,policy", list(_cases()))
def test_mixed_precision_build_and_run(name, policy):
    keras.mixed_precision.set_global_policy(policy)
    model = create_model(name, **_kwargs(name))
    size = model.input_shape[1]
    compute = policy.split("_")[1]
    blocks = sdl.stochastic_depth_layers(model)
    # test_efficientnet's only residual block is its first, which the "efficientnet" rule keeps
    # with p = 1 (no layer; its registered count says 0): its convs carry the dtype check. Every
    # other model has its registered number of stochastic blocks.
    assert len(blocks) == get_model_info(name).num_sd_blocks
    assert blocks or name == "test_efficientnet"
    if name.startswith("efficientnet_") and policy == "mixed_bfloat16":
        # The variant's plan and published counts (test_efficientnet; counts are the same under
        # any policy: float32 master weights), on this full-size build instead of one more.
        check_variant(model, name, num_classes=5)
    convs = [c for c in model._flatten_layers() if isinstance(c, keras.layers.Conv2D)]
    assert convs and all(c.compute_dtype == compute for c in convs)
    assert all(b.compute_dtype == compute for b in blocks)
    assert all(w.dtype == "float32" for w in model.trainable_weights)  # float32 master weights
    x = np.random.default_rng(0).uniform(0, 255, (4, size, size, 3)).astype("float32")
    labels = tf.constant([0, 1, 2, 3])
    # The classifier: the last Dense ("predictions" in tfsd and most keras.applications models,
    # "convnext_tiny_head_dense" in ConvNeXt).
    dense = [c for c in model._flatten_layers() if isinstance(c, keras.layers.Dense)][-1]
    head_weights = list(dense.trainable_weights)
    head_paths = {v.path for v in head_weights}
    assert len(head_paths) == 2
    # Which gradients are checked decides what the tape records: bfloat16 checks every one;
    # float16 only the head's, and a tape that
    # watches just the head skips the backward pass through the whole network (the most
    # expensive part of the test for deep models).
    every_gradient = policy == "mixed_bfloat16"

    # Training mode (batch statistics, stochastic depth active): finite in both policies.
    with tf.GradientTape(watch_accessed_variables=every_gradient) as tape:
        tape.watch([v.value for v in head_weights])  # the backing tf.Variables
        logits = model(x, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
        )
    assert logits.dtype == tf.float32 and logits.shape == (4, 5)
    assert np.all(np.isfinite(logits.numpy())) and np.isfinite(loss.numpy())
    sources = model.trainable_weights if every_gradient else head_weights
    grads = tape.gradient(loss, sources)
    head = [g for v, g in zip(sources, grads) if v.path in head_paths]
    assert len(head) == 2 and all(np.all(np.isfinite(g.numpy())) for g in head)

    infer = model(x, training=False)
    assert infer.dtype == tf.float32 and infer.shape == (4, 5)
    if every_gradient:
        # bfloat16 has float32's range: every gradient is finite, and so is inference.
        # float16 needs loss scaling, and untrained moving statistics (mean 0, variance 1) let
        # activations outgrow its 65504 in deep nets, keras.applications' EfficientNets
        # included; neither says anything about the model, so float16 is checked in training
        # mode only.
        assert all(g is None or np.all(np.isfinite(g.numpy())) for g in grads)
        assert np.all(np.isfinite(infer.numpy()))
