"""Tests of tfsd.models.import_torch_efficientnet: lukemelas / timm EfficientNets by name.

State dicts are built here in each source's naming (the names written below from lukemelas'
``efficientnet_pytorch/model.py`` and timm's ``_efficientnet_blocks.py``, shapes in torch layout,
random values with fixed seeds). The reference is NumPy code of the source's stem and one MBConv
block (expand, depthwise with the source's stride-2 padding, SE, project; BatchNorm with the
source's eps) computed from that state dict, never tfsd's own layers.
"""

import keras
import numpy as np
import pytest

from tests.test_import_torch import np_conv2d
from tfsd.models import create_model, load_pretrained, load_torch_efficientnet_weights

# tfsd layer → (lukemelas name, timm name in an InvertedResidual, timm name in a DS block).
BLOCK_NAMES = {
    "expand_conv": ("_expand_conv", "conv_pw", None),
    "expand_bn": ("_bn0", "bn1", None),
    "dwconv": ("_depthwise_conv", "conv_dw", "conv_dw"),
    "bn": ("_bn1", "bn2", "bn1"),
    "se_reduce": ("_se_reduce", "se.conv_reduce", "se.conv_reduce"),
    "se_expand": ("_se_expand", "se.conv_expand", "se.conv_expand"),
    "project_conv": ("_project_conv", "conv_pwl", "conv_pw"),
    "project_bn": ("_bn2", "bn3", "bn2"),
}
TOP_NAMES = {  # tfsd → (lukemelas, timm)
    "stem_conv": ("_conv_stem", "conv_stem"),
    "stem_bn": ("_bn0", "bn1"),
    "top_conv": ("_conv_head", "conv_head"),
    "top_bn": ("_bn1", "bn2"),
    "predictions": ("_fc", "classifier"),
}
BN = ("weight", "bias", "running_mean", "running_var")


def _torch_name(layer_name, naming, blocks, expands):
    if layer_name in TOP_NAMES:
        return TOP_NAMES[layer_name][naming == "timm"]
    prefix, kind = layer_name.split("_", 1)
    stage, letter = int(prefix[5:-1]), prefix[-1]
    if naming == "lukemelas":
        return f"_blocks.{blocks.index(prefix)}.{BLOCK_NAMES[kind][0]}"
    column = 1 if prefix in expands else 2
    return f"blocks.{stage - 1}.{ord(letter) - ord('a')}.{BLOCK_NAMES[kind][column]}"


def source_state_dict(model, naming, seed=0):
    """Random tensors in torch layout for every weight of ``model``, named as ``naming``."""
    rng = np.random.default_rng(seed)
    layers = [
        lay
        for lay in model._flatten_layers(include_self=False)
        if lay.weights and lay.name != "normalization" and not lay.name.endswith(("_", "drop"))
        and type(lay).__name__ not in ("StochasticResidual", "Functional")
    ]  # fmt: skip
    prefixes = sorted({lay.name.split("_")[0] for lay in layers if lay.name.startswith("block")})
    prefixes.sort(key=lambda p: (int(p[5:-1]), p[-1]))
    expands = {lay.name.split("_")[0] for lay in layers if lay.name.endswith("_expand_conv")}
    state = {}
    for lay in layers:
        name = _torch_name(lay.name, naming, prefixes, expands)
        kind = type(lay).__name__
        if kind == "BatchNormalization":
            c = lay.gamma.shape[0]
            state[f"{name}.weight"] = rng.uniform(0.5, 1.5, c)
            state[f"{name}.bias"] = rng.normal(0, 0.2, c)
            state[f"{name}.running_mean"] = rng.normal(0, 0.2, c)
            state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, c)
            state[f"{name}.num_batches_tracked"] = np.asarray(7)
        elif kind == "DepthwiseConv2D":
            kh, kw, c, _ = lay.kernel.shape
            state[f"{name}.weight"] = rng.normal(0, 0.3, (c, 1, kh, kw))
        elif kind == "Conv2D":
            kh, kw, i, o = lay.kernel.shape
            state[f"{name}.weight"] = rng.normal(0, np.sqrt(2.0 / (i * kh * kw)), (o, i, kh, kw))
            if lay.use_bias:
                state[f"{name}.bias"] = rng.normal(0, 0.1, o)
        elif kind == "Dense":
            i, o = lay.kernel.shape
            state[f"{name}.weight"] = rng.normal(0, 0.1, (o, i))
            state[f"{name}.bias"] = rng.normal(0, 0.1, o)
        else:
            raise AssertionError(kind)
    return {
        k: np.asarray(v, "int64" if "num_batches" in k else "float32") for k, v in state.items()
    }


# -------------------------------------------------------------------------------------------------
# NumPy reference (NCHW, torch layout).
# -------------------------------------------------------------------------------------------------


def np_bn(x, state, p, eps):
    g, b, m, v = (state[f"{p}.{k}"].astype("float64")[None, :, None, None] for k in BN)
    return (x - m) / np.sqrt(v + eps) * g + b


def same_pads(size, kernel, stride):
    """lukemelas ``Conv2dStaticSamePadding`` / TF "same": (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def np_pad(x, kernel, stride, padding):
    if padding == "symmetric" or stride == 1:  # PyTorch padding=k // 2; "same" at stride 1
        before = after = kernel // 2
    else:
        before, after = same_pads(x.shape[2], kernel, stride)
    return np.pad(x, ((0, 0), (0, 0), (before, after), (before, after)))


def np_depthwise(x, w, stride):
    kh, kw = w.shape[2:]
    oh, ow = (x.shape[2] - kh) // stride + 1, (x.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], x.shape[1], oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            y += patch * w[None, :, 0, i, j, None, None]
    return y


ACT = {
    "swish": lambda x: x / (1 + np.exp(-x)),
    "relu6": lambda x: np.clip(x, 0, 6),
}


def np_mbconv(x, state, p, names, *, stride, kernel, act, eps, padding):
    """One MBConv block as the source computes it (lukemelas ``MBConvBlock.forward``, timm
    ``InvertedResidual.forward``): expand → depthwise → SE → project, no skip (stride 2)."""
    if f"{p}{names['expand_conv']}.weight" in state:
        x = act(np_bn(np_conv2d(x, state[f"{p}{names['expand_conv']}.weight"]), state,
                      p + names["expand_bn"], eps))  # fmt: skip
    x = np_pad(x, kernel, stride, padding)
    x = act(np_bn(np_depthwise(x, state[f"{p}{names['dwconv']}.weight"], stride), state,
                  p + names["bn"], eps))  # fmt: skip
    if f"{p}{names['se_reduce']}.weight" in state:
        s = x.mean(axis=(2, 3), keepdims=True)
        s = act(np_conv2d(s, state[f"{p}{names['se_reduce']}.weight"])
                + state[f"{p}{names['se_reduce']}.bias"][None, :, None, None])  # fmt: skip
        s = np_conv2d(s, state[f"{p}{names['se_expand']}.weight"])
        s = s + state[f"{p}{names['se_expand']}.bias"][None, :, None, None]
        x = x / (1 + np.exp(-s))
    x = np_conv2d(x, state[f"{p}{names['project_conv']}.weight"])
    return np_bn(x, state, p + names["project_bn"], eps)


# arch, naming, tfsd model kwargs, activation, eps, padding, mean, std
CASES = {
    "efficientnet-b0": ("lukemelas", dict(name="test_efficientnet"), "swish", 1e-3, "same",
                        (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "efficientnet_b0": ("timm", dict(name="test_efficientnet", stride2_padding="symmetric"),
                        "swish", 1e-5, "symmetric", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "tf_efficientnet_lite0": ("timm", dict(name="efficientnet_lite0", width=0.25, depth=0.1),
                              "relu6", 1e-3, "same", (0.5,) * 3, (0.5,) * 3),
    "efficientnet-lite0": ("lukemelas", dict(name="efficientnet_lite0", width=0.25, depth=0.1),
                           "relu6", 1e-3, "same", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}  # fmt: skip


def _model(kwargs):
    kwargs = dict(kwargs)
    return create_model(kwargs.pop("name"), num_classes=5, input_shape=(32, 32, 3), **kwargs)


@pytest.mark.parametrize("arch", CASES)
def test_stem_and_a_stride2_block_match_numpy_reference(arch):
    naming, kwargs, act_name, eps, padding, mean, std = CASES[arch]
    model = _model(kwargs)
    state = source_state_dict(model, naming)
    load_torch_efficientnet_weights(model, state, arch=arch)

    probe = keras.Model(
        model.inputs,
        [
            model.get_layer("stem_activation").output,
            model.get_layer("block2a_expand_conv").input,
            model.get_layer("block2a_project_bn").output,
        ],
    )
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    stem, block_in, block_out = (np.asarray(t) for t in probe([images], training=False))
    act = ACT[act_name]
    nchw = lambda t: np.transpose(np.asarray(t, "float64"), (0, 3, 1, 2))  # noqa: E731

    x = (nchw(images) / 255 - np.asarray(mean)[:, None, None]) / np.asarray(std)[:, None, None]
    stem_name, bn_name = (
        TOP_NAMES["stem_conv"][naming == "timm"],
        TOP_NAMES["stem_bn"][naming == "timm"],
    )
    x = np_conv2d(np_pad(x, 3, 2, padding), state[f"{stem_name}.weight"], 2)
    x = act(np_bn(x, state, bn_name, eps))
    np.testing.assert_allclose(nchw(stem), x, rtol=1e-4, atol=1e-4)

    p = "_blocks.1." if naming == "lukemelas" else "blocks.1.0."
    names = {k: v[0] if naming == "lukemelas" else v[1] for k, v in BLOCK_NAMES.items()}
    want = np_mbconv(nchw(block_in), state, p, names, stride=2, kernel=3, act=act, eps=eps,
                     padding=padding)  # fmt: skip
    np.testing.assert_allclose(nchw(block_out), want, rtol=1e-4, atol=1e-4)


def _weights(model):
    return [np.asarray(v).copy() for v in model.weights]


def test_architecture_differences_are_refused_by_name():
    b0 = _model(dict(name="test_efficientnet"))
    before = _weights(b0)
    timm_state = source_state_dict(b0, "timm")
    with pytest.raises(ValueError, match="stride2_padding='symmetric'"):
        load_torch_efficientnet_weights(b0, timm_state, arch="efficientnet_b0")
    with pytest.raises(ValueError, match="relu6 activation"):
        load_torch_efficientnet_weights(b0, timm_state, arch="tf_efficientnet_lite0")
    with pytest.raises(ValueError, match="Unknown PyTorch EfficientNet"):
        load_torch_efficientnet_weights(b0, timm_state, arch="mobilenetv3_large_100")
    # timm's tensors into lukemelas naming: every tensor is missing, named.
    with pytest.raises(ValueError, match="no tensor '_conv_stem.weight'"):
        load_torch_efficientnet_weights(b0, timm_state, arch="efficientnet-b0")
    # timm needs arch= (tf_ ports and native models differ in padding and eps).
    with pytest.raises(ValueError, match="pass arch="):
        load_pretrained(b0, timm_state)
    lite = _model(dict(name="efficientnet_lite0", width=0.25, depth=0.1))
    no_se = source_state_dict(lite, "lukemelas")
    lite_b = create_model("efficientnet_lite0", num_classes=5, input_shape=(32, 32, 3),
                          width=0.25, depth=0.1, activation="swish")  # fmt: skip
    with pytest.raises(ValueError, match="squeeze-and-excitation"):
        load_torch_efficientnet_weights(lite_b, no_se, arch="efficientnet-b0")
    wrong = dict(source_state_dict(b0, "lukemelas"))
    wrong["_blocks.1._depthwise_conv.weight"] = wrong["_blocks.1._depthwise_conv.weight"][:-1]
    with pytest.raises(ValueError, match=r"_blocks.1._depthwise_conv.weight.*shape"):
        load_torch_efficientnet_weights(b0, wrong, arch="efficientnet-b0")
    for a, b in zip(before, _weights(b0), strict=True):
        np.testing.assert_array_equal(a, b)
