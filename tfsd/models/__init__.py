"""tfsd model zoo: one registry of functional Keras builders with stochastic depth.

Importing this package registers every model (``list_models()``).
"""

from tfsd.models import efficientnet, resnet  # noqa: F401  (registration)
from tfsd.models.common import SDConfig
from tfsd.models.fold import fold_stochastic_depth
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
from tfsd.models.weights import (
    load_keras_applications_weights,
    scale_branch_output,
    scale_layer_output,
)

__all__ = [
    "ModelInfo",
    "SDConfig",
    "create_model",
    "default_input_size",
    "fold_stochastic_depth",
    "get_builder",
    "get_model_info",
    "list_models",
    "load_keras_applications_weights",
    "load_torch_resnet_weights",
    "register",
    "scale_branch_output",
    "scale_layer_output",
]
