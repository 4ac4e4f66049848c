"""tfsd model zoo: one registry of functional Keras builders with stochastic depth.

Importing this package registers every model (``list_models()``).
"""

from tfsd.models import efficientnet, resnet  # noqa: F401  (registration)
from tfsd.models.registry import create_model, get_builder, list_models, register

__all__ = ["create_model", "get_builder", "list_models", "register"]
