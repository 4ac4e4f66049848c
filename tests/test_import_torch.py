"""Tests of tfsd.models.import_torch: torchvision ResNet state dicts into tfsd ResNets.

The state dicts are written here in torchvision's naming and layout from NumPy arrays (random,
fixed seeds) with ``safetensors.numpy.save_file``; outputs are checked against a NumPy reference
written from torchvision's ``resnet.py`` (NCHW, OIHW kernels, BatchNorm in eval mode), never
against tfsd itself.
"""

import keras
import numpy as np
import pytest
from safetensors.numpy import save_file

from tfsd import layers as sdl
from tfsd.models import (
    common,
    create_model,
    fold_stochastic_depth,
    load_pretrained,
    load_torch_resnet_weights,
)

EXPANSION = {"basic": 1, "bottleneck": 4}


# -------------------------------------------------------------------------------------------------
# A torchvision ResNet state dict, and a NumPy reference of its forward pass.
# -------------------------------------------------------------------------------------------------


def _conv(rng, out, inp, k):
    return (rng.normal(0, 1, (out, inp, k, k)) * np.sqrt(2.0 / (inp * k * k))).astype("float32")


def _bn(state, rng, prefix, c):
    state[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype("float32")
    state[f"{prefix}.bias"] = rng.normal(0, 0.2, c).astype("float32")
    state[f"{prefix}.running_mean"] = rng.normal(0, 0.2, c).astype("float32")
    state[f"{prefix}.running_var"] = rng.uniform(0.5, 1.5, c).astype("float32")
    state[f"{prefix}.num_batches_tracked"] = np.asarray(1234, "int64")


def torchvision_state_dict(block, blocks, num_classes, width=1.0, seed=0, cifar=False):
    """torchvision ``ResNet(block, layers)`` tensors (or the CIFAR 16/32/64 option-A layout)."""
    rng = np.random.default_rng(seed)
    w = lambda c: max(1, int(round(c * width)))  # noqa: E731
    state = {}
    stem = w(16) if cifar else w(64)
    state["conv1.weight"] = _conv(rng, stem, 3, 3 if cifar else 7)
    _bn(state, rng, "bn1", stem)
    inplanes = stem
    channels = (16, 32, 64) if cifar else (64, 128, 256, 512)
    for s, (c, n) in enumerate(zip(channels, blocks, strict=True)):
        planes = w(c)
        for b in range(n):
            p = f"layer{s + 1}.{b}."
            stride = 2 if s > 0 and b == 0 else 1
            if block == "basic":
                state[p + "conv1.weight"] = _conv(rng, planes, inplanes, 3)
                _bn(state, rng, p + "bn1", planes)
                state[p + "conv2.weight"] = _conv(rng, planes, planes, 3)
                _bn(state, rng, p + "bn2", planes)
            else:
                state[p + "conv1.weight"] = _conv(rng, planes, inplanes, 1)
                _bn(state, rng, p + "bn1", planes)
                state[p + "conv2.weight"] = _conv(rng, planes, planes, 3)
                _bn(state, rng, p + "bn2", planes)
                state[p + "conv3.weight"] = _conv(rng, planes * 4, planes, 1)
                _bn(state, rng, p + "bn3", planes * 4)
            out = planes * EXPANSION[block]
            if not cifar and (stride != 1 or inplanes != out):
                state[p + "downsample.0.weight"] = _conv(rng, out, inplanes, 1)
                _bn(state, rng, p + "downsample.1", out)
            inplanes = out
    head = "linear" if cifar else "fc"
    bound = 1.0 / np.sqrt(inplanes)
    state[f"{head}.weight"] = rng.uniform(-bound, bound, (num_classes, inplanes)).astype("float32")
    state[f"{head}.bias"] = rng.uniform(-bound, bound, num_classes).astype("float32")
    return state


def np_conv2d(x, w, stride=1, pad=0):
    """Cross-correlation of NCHW ``x`` with OIHW ``w`` (torch ``F.conv2d``), zero padding."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    return y


def np_bn(x, state, prefix, eps=1e-5):
    """BatchNorm2d in eval mode."""
    g, b, m, v = (
        state[f"{prefix}.{k}"].astype("float64")[None, :, None, None]
        for k in ("weight", "bias", "running_mean", "running_var")
    )
    return (x - m) / np.sqrt(v + eps) * g + b


def np_maxpool_3x3_s2_p1(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    h, w = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    return np.max(
        [x[:, :, i : i + 2 * h : 2, j : j + 2 * w : 2] for i in range(3) for j in range(3)], axis=0
    )


def relu(x):
    return np.maximum(x, 0)


def np_basic_block(x, state, p, stride):
    """torchvision ``BasicBlock.forward`` (eval)."""
    y = relu(np_bn(np_conv2d(x, state[p + "conv1.weight"], stride, 1), state, p + "bn1"))
    y = np_bn(np_conv2d(y, state[p + "conv2.weight"], 1, 1), state, p + "bn2")
    return relu(y + _np_shortcut(x, state, p, stride))


def np_bottleneck_block(x, state, p, stride):
    """torchvision ``Bottleneck.forward`` (eval): v1.5, the stride on the 3×3 conv."""
    y = relu(np_bn(np_conv2d(x, state[p + "conv1.weight"]), state, p + "bn1"))
    y = relu(np_bn(np_conv2d(y, state[p + "conv2.weight"], stride, 1), state, p + "bn2"))
    y = np_bn(np_conv2d(y, state[p + "conv3.weight"]), state, p + "bn3")
    return relu(y + _np_shortcut(x, state, p, stride))


def _np_shortcut(x, state, p, stride):
    if p + "downsample.0.weight" not in state:
        return x
    return np_bn(np_conv2d(x, state[p + "downsample.0.weight"], stride), state, p + "downsample.1")


def _nchw(x):
    return np.transpose(np.asarray(x, "float64"), (0, 3, 1, 2))


def _images(n=2, size=32, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def _save(state, tmp_path, name="resnet.safetensors"):
    path = tmp_path / name
    save_file(state, str(path))
    return path


# -------------------------------------------------------------------------------------------------
# Round trip: every tfsd weight is the (transposed) source tensor.
# -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, block, blocks, width, cifar",
    [
        ("resnet18", "basic", (2, 2, 2, 2), 0.25, False),
        ("resnet50", "bottleneck", (3, 4, 6, 3), 0.0625, False),
        ("cifar_resnet20", "basic", (3, 3, 3), 0.5, True),
    ],
)
def test_round_trip_every_weight_is_the_source_tensor(name, block, blocks, width, cifar, tmp_path):
    state = torchvision_state_dict(block, blocks, 5, width=width, cifar=cifar)
    path = _save(state, tmp_path)
    pad = {"shortcut_pad": "symmetric"} if cifar else {}  # akamaster's option A
    model = create_model(
        name, num_classes=5, width=width, survival_prob=1.0, input_shape=(32, 32, 3), **pad
    )
    copied = load_torch_resnet_weights(model, path)

    layers = {lay.name: lay for lay in model._flatten_layers(include_self=False)}
    convs = [lay for lay in layers.values() if isinstance(lay, keras.layers.Conv2D)]
    bns = [lay for lay in layers.values() if isinstance(lay, keras.layers.BatchNormalization)]
    n_source = len([k for k in state if k.endswith(".weight")])  # convs + BNs + head
    assert len(convs) + len(bns) + 1 == n_source == len(copied) - 1  # - normalization
    checked = 0
    for key, value in state.items():
        if key.endswith("num_batches_tracked"):
            continue
        parts = key.split(".")
        if parts[0] in ("fc", "linear"):
            dense = layers["predictions"]
            got = dense.kernel if parts[1] == "weight" else dense.bias
            want = value.T if parts[1] == "weight" else value
        else:
            if parts[0] in ("conv1", "bn1"):
                lname = "conv1_" + ("conv" if parts[0] == "conv1" else "bn")
            else:
                s, b = int(parts[0][5:]) + 1, int(parts[1]) + 1
                if parts[2] == "downsample":
                    z, kind = "0", "conv" if parts[3] == "0" else "bn"
                else:
                    z, kind = parts[2][-1], parts[2][:-1]
                lname = f"conv{s}_block{b}_{z}_{kind}"
            lay = layers[lname]
            if kind_is_conv := isinstance(lay, keras.layers.Conv2D):
                got, want = lay.kernel, np.transpose(value, (2, 3, 1, 0))  # OIHW → HWIO
            else:
                attr = {
                    "weight": "gamma",
                    "bias": "beta",
                    "running_mean": "moving_mean",
                    "running_var": "moving_variance",
                }[parts[-1]]
                got, want = getattr(lay, attr), value
            assert kind_is_conv == (parts[-1] == "weight" and value.ndim == 4)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=key)
        checked += 1
    assert checked == sum(not k.endswith("num_batches_tracked") for k in state)
    norm = layers["normalization"]
    np.testing.assert_allclose(np.asarray(norm.mean).ravel(), common.IMAGENET_MEAN, rtol=1e-6)
    np.testing.assert_allclose(
        np.sqrt(np.asarray(norm.variance)).ravel(), common.IMAGENET_STD, rtol=1e-6
    )


# -------------------------------------------------------------------------------------------------
# Outputs against the NumPy reference.
# -------------------------------------------------------------------------------------------------


def test_bottleneck_block_matches_numpy_reference(tmp_path):
    """conv3_block1 of ResNet-50 (stride 2 on the 3×3 conv, projection shortcut) vs NumPy.

    Built with the default stochastic depth (p_L = 0.8, scale at inference): the importer must fold
    1/p into the branch for the block to compute the PyTorch (identity at inference) output.
    """
    width = 0.125
    state = torchvision_state_dict("bottleneck", (3, 4, 6, 3), 10, width=width, seed=3)
    model = create_model("resnet50", num_classes=10, width=width, input_shape=(64, 64, 3))
    assert sdl.stochastic_depth_layers(model)[4].survival_prob < 1.0
    load_torch_resnet_weights(model, _save(state, tmp_path))
    probe = keras.Model(
        model.input,
        [model.get_layer("conv2_block3_out").output, model.get_layer("conv3_block1_out").output],
    )
    block_in, block_out = probe(_images(size=64), training=False)
    want = np_bottleneck_block(_nchw(block_in), state, "layer2.0.", stride=2)
    assert want.shape == (2, 64, 8, 8)
    np.testing.assert_allclose(_nchw(block_out), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bn_epsilon", [1e-5, 1e-3])
def test_resnet18_stem_and_first_stage_match_numpy_reference(bn_epsilon, tmp_path):
    """From [0, 255] images: normalisation, 7×7/2 stem, max pool and two basic blocks vs NumPy.

    ``bn_epsilon=1e-3`` (not torch's 1e-5): the importer keeps var + eps, so outputs still match.
    """
    width = 0.25
    state = torchvision_state_dict("basic", (2, 2, 2, 2), 4, width=width, seed=5)
    model = create_model(
        "resnet18", num_classes=4, width=width, input_shape=(32, 32, 3), bn_epsilon=bn_epsilon
    )
    load_torch_resnet_weights(model, _save(state, tmp_path))
    images = _images()
    probe = keras.Model(model.input, model.get_layer("conv2_block2_out").output)
    got = _nchw(probe(images, training=False))

    mean = np.asarray(common.IMAGENET_MEAN)[None, :, None, None]
    std = np.asarray(common.IMAGENET_STD)[None, :, None, None]
    x = (_nchw(images) / 255.0 - mean) / std  # torchvision ToTensor + Normalize
    x = relu(np_bn(np_conv2d(x, state["conv1.weight"], 2, 3), state, "bn1"))
    x = np_maxpool_3x3_s2_p1(x)
    x = np_basic_block(x, state, "layer1.0.", 1)
    x = np_basic_block(x, state, "layer1.1.", 1)
    assert x.shape == got.shape == (2, 16, 8, 8)
    np.testing.assert_allclose(got, x, rtol=1e-4, atol=1e-4)


def np_akamaster_lambda_layer(x, planes):
    """akamaster/pytorch_resnet_cifar10 ``resnet.py``, option A, in NumPy::

        LambdaLayer(lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4),
                                    "constant", 0))

    F.pad's 6-tuple pads the last three axes, last first: W by (0, 0), H by (0, 0), C by
    (planes // 4, planes // 4): zero channels before *and* after the existing ones.
    """
    return np.pad(x[:, :, ::2, ::2], ((0, 0), (planes // 4, planes // 4), (0, 0), (0, 0)))


def np_akamaster_basic_block(x, state, p, in_planes, planes, stride):
    """akamaster's ``BasicBlock.forward`` (eval), option A."""
    out = relu(np_bn(np_conv2d(x, state[p + "conv1.weight"], stride, 1), state, p + "bn1"))
    out = np_bn(np_conv2d(out, state[p + "conv2.weight"], 1, 1), state, p + "bn2")
    shortcut = x
    if stride != 1 or in_planes != planes:
        shortcut = np_akamaster_lambda_layer(x, planes)
    return relu(out + shortcut)


def test_akamaster_cifar_resnet_matches_numpy_reimplementation(tmp_path):
    """A whole akamaster CIFAR ResNet-20 (option-A shortcuts, ``linear`` head), images to logits.

    The reference re-implements akamaster's LambdaLayer and BasicBlock (above), not tfsd's
    shortcut: before the fix tfsd appended every zero channel after the existing ones, and this
    test failed (max |diff| ~ the logits' scale).
    """
    width = 0.25
    state = torchvision_state_dict("basic", (3, 3, 3), 10, width=width, seed=7, cifar=True)
    model = create_model("cifar_resnet20", num_classes=10, width=width, shortcut_pad="symmetric")
    mean, std = common.CIFAR10_MEAN, common.CIFAR10_STD
    load_torch_resnet_weights(model, _save(state, tmp_path), mean=mean, std=std)
    images = _images(size=32)
    got = np.asarray(model(images, training=False))

    x = (_nchw(images) / 255.0 - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    x = relu(np_bn(np_conv2d(x, state["conv1.weight"], 1, 1), state, "bn1"))
    in_planes = x.shape[1]
    for s in range(3):
        planes = state[f"layer{s + 1}.0.conv1.weight"].shape[0]
        for b in range(3):
            stride = 2 if s > 0 and b == 0 else 1
            x = np_akamaster_basic_block(x, state, f"layer{s + 1}.{b}.", in_planes, planes, stride)
            in_planes = planes
    logits = x.mean(axis=(2, 3)) @ state["linear.weight"].T + state["linear.bias"]
    np.testing.assert_allclose(got, logits, rtol=1e-4, atol=1e-4)
    # The folded export form (stock Keras padding layers) keeps the placement.
    folded = fold_stochastic_depth(model)
    np.testing.assert_allclose(np.asarray(folded(images)), logits, rtol=1e-4, atol=1e-4)


def test_akamaster_weights_into_append_only_shortcuts_are_refused(tmp_path):
    """tfsd's default shortcut (the paper's nn.Padding: zeros after) cannot hold akamaster's."""
    state = torchvision_state_dict("basic", (3, 3, 3), 10, width=0.25, seed=7, cifar=True)
    model = create_model("cifar_resnet20", num_classes=10, width=0.25)
    before = _weights(model)
    with pytest.raises(ValueError, match="shortcut_pad='symmetric'"):
        load_torch_resnet_weights(model, _save(state, tmp_path))
    for a, b in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(a, b)


# -------------------------------------------------------------------------------------------------
# Heads, feature extractors and errors.
# -------------------------------------------------------------------------------------------------


def _weights(model):
    return [np.asarray(v).copy() for v in model.weights]


def test_new_head_with_skip_layers_and_notop_model(tmp_path):
    state = torchvision_state_dict("basic", (2, 2, 2, 2), 1000, width=0.25)
    path = _save(state, tmp_path)
    model = create_model("resnet18", num_classes=3, width=0.25, input_shape=(32, 32, 3))
    head = np.asarray(model.get_layer("predictions").kernel).copy()
    with pytest.raises(
        ValueError, match=r"'fc.weight'.*\(1000, 128\).*predictions/kernel.*\(128, 3"
    ):
        load_torch_resnet_weights(model, path)
    copied = load_torch_resnet_weights(model, path, skip_layers=["predictions"])
    assert "predictions" not in copied
    np.testing.assert_array_equal(np.asarray(model.get_layer("predictions").kernel), head)
    # A feature extractor has no head: the source's fc is not needed.
    features = create_model(
        "resnet18", num_classes=3, width=0.25, input_shape=(32, 32, 3), include_top=False
    )
    load_torch_resnet_weights(features, path)
    conv = next(x for x in features._flatten_layers() if x.name == "conv5_block2_2_conv")
    np.testing.assert_array_equal(
        np.asarray(conv.kernel),
        np.transpose(state["layer4.1.conv2.weight"], (2, 3, 1, 0)),
    )


def test_bad_sources_are_refused_and_leave_the_model_unchanged(tmp_path):
    model = create_model("resnet18", num_classes=5, width=0.25, input_shape=(32, 32, 3))
    before = _weights(model)
    state = torchvision_state_dict("basic", (2, 2, 2, 2), 5, width=0.25)

    missing = dict(state)
    del missing["layer3.1.bn2.running_var"]
    with pytest.raises(
        ValueError, match=r"no tensor 'layer3.1.bn2.running_var'.*conv4_block2_2_bn"
    ):
        load_torch_resnet_weights(model, missing)
    wrong = dict(state, **{"layer2.0.conv1.weight": state["layer2.0.conv1.weight"][:, :, :1, :1]})
    with pytest.raises(ValueError, match=r"'layer2.0.conv1.weight'.*\(32, 16, 1, 1\)"):
        load_torch_resnet_weights(model, wrong)
    deep_stem = dict(state, **{"conv1.3.weight": state["conv1.weight"]})  # e.g. timm resnet50d
    with pytest.raises(ValueError, match=r"no counterpart for: \['conv1.3.weight'\]"):
        load_torch_resnet_weights(model, deep_stem)
    bottleneck = torchvision_state_dict("bottleneck", (2, 2, 2, 2), 5, width=0.25)
    with pytest.raises(ValueError, match="shape"):
        load_torch_resnet_weights(model, bottleneck)
    with pytest.raises(FileNotFoundError):
        load_torch_resnet_weights(model, tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="Cannot read"):
        load_torch_resnet_weights(model, tmp_path / "junk.safetensors")
    (tmp_path / "model.pth").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="truncated or not a torch checkpoint"):
        load_torch_resnet_weights(model, tmp_path / "model.pth")
    with pytest.raises(ValueError, match="std must be positive"):
        load_torch_resnet_weights(model, state, std=(0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="bn_epsilon"):
        load_torch_resnet_weights(model, state, source_bn_epsilon=-1.0)
    for got, want in zip(_weights(model), before, strict=True):
        np.testing.assert_array_equal(got, want)

    cifar = create_model("cifar_resnet20", num_classes=5, width=0.25, shortcut_pad="symmetric")
    option_b = torchvision_state_dict("basic", (3, 3, 3), 5, width=0.25, cifar=True)
    option_b["layer2.0.downsample.0.weight"] = _conv(np.random.default_rng(0), 8, 4, 1)
    with pytest.raises(ValueError, match="downsample"):
        load_torch_resnet_weights(cifar, option_b, mean=common.CIFAR10_MEAN)
    effnet = create_model("efficientnet_b0", num_classes=5, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="no torchvision ResNet counterpart"):
        load_torch_resnet_weights(effnet, state)


def test_pth_files_in_both_torch_formats_import_like_safetensors(tmp_path):
    """The same state dict as .safetensors, zip .pth and legacy .pth gives the same model."""
    from tests import torch_files

    state = torchvision_state_dict("basic", (2, 2, 2, 2), 5, width=0.25, seed=3)
    outputs = []
    for name, save in [
        ("m.safetensors", lambda sd, p: save_file(sd, str(p))),
        ("zip.pth", lambda sd, p: torch_files.save_zip(torch_files.state_dict(sd), p)),
        ("legacy.pth", lambda sd, p: torch_files.save_legacy(torch_files.state_dict(sd), p)),
    ]:
        model = create_model("resnet18", num_classes=5, width=0.25, input_shape=(32, 32, 3))
        load_pretrained(model, save(state, tmp_path / name) or tmp_path / name)
        outputs.append(np.asarray(model(_images(), training=False)))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])
