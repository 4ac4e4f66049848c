"""tfsd model zoo: one registry of functional Keras builders with stochastic depth.

Importing this package registers every model (``list_models()``). Modules: ``common`` (constants,
`SDConfig`, shared blocks), ``registry``, ``resnet``, ``efficientnet``, ``folding`` (folding
factors into weights, `fold_stochastic_depth`), ``rewrite`` (its inverse,
`add_stochastic_depth`: stochastic depth for any functional residual network),
``keras_applications`` (keras.applications architectures as ``keras_applications/NAME``),
``import_keras`` and ``import_torch`` (weights from keras.applications and PyTorch).
"""

from tfsd.models import efficientnet, keras_applications, resnet  # noqa: F401  (registration)
from tfsd.models.common import SDConfig
from tfsd.models.folding import (
    fold_stochastic_depth,
    match_inverted_scaling,
    scale_branch_output,
    scale_layer_output,
)
from tfsd.models.import_keras import load_keras_applications_weights
from tfsd.models.import_torch import load_torch_resnet_weights
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
    "load_torch_resnet_weights",
    "match_inverted_scaling",
    "register",
    "scale_branch_output",
    "scale_layer_output",
]
