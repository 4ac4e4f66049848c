"""tfsd model zoo: one registry of functional Keras builders with stochastic depth.

Importing this package registers every model (``list_models()``). Modules: ``common`` (constants,
`SDConfig`, shared blocks), ``registry``, ``resnet``, ``efficientnet``, ``folding`` (folding
factors into weights, `fold_stochastic_depth`, `refresh_normalization`), ``rewrite`` (its inverse,
`add_stochastic_depth`: stochastic depth for any functional residual network),
``keras_applications`` (keras.applications architectures as ``keras_applications/NAME``),
``import_keras``, ``import_torch`` and ``import_torch_efficientnet`` (weights from
keras.applications and PyTorch), ``torch_file`` (PyTorch checkpoints without pickle) and
``pretrained`` (`load_pretrained`).
"""

from tfsd.models import efficientnet, keras_applications, resnet  # noqa: F401  (registration)
from tfsd.models.common import SDConfig
from tfsd.models.folding import (
    fold_stochastic_depth,
    match_inverted_scaling,
    refresh_normalization,
    scale_branch_output,
    scale_layer_output,
)
from tfsd.models.import_keras import load_keras_applications_weights
from tfsd.models.import_torch import load_torch_resnet_weights
from tfsd.models.import_torch_efficientnet import load_torch_efficientnet_weights
from tfsd.models.pretrained import load_pretrained
from tfsd.models.registry import (
    ModelInfo,
    create_model,
    default_input_size,
    get_builder,
    get_model_info,
    list_models,
    register,
)
from tfsd.models.rewrite import RewriteReport, add_stochastic_depth, find_residual_blocks
from tfsd.models.torch_file import read_torch_file

__all__ = [
    "ModelInfo",
    "RewriteReport",
    "SDConfig",
    "add_stochastic_depth",
    "create_model",
    "default_input_size",
    "find_residual_blocks",
    "fold_stochastic_depth",
    "get_builder",
    "get_model_info",
    "list_models",
    "load_keras_applications_weights",
    "load_pretrained",
    "load_torch_efficientnet_weights",
    "load_torch_resnet_weights",
    "match_inverted_scaling",
    "read_torch_file",
    "refresh_normalization",
    "register",
    "scale_branch_output",
    "scale_layer_output",
]
