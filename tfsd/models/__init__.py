"""tfsd model zoo: one registry of functional Keras builders with stochastic depth."""

from tfsd.models.registry import create_model, get_builder, list_models, register

__all__ = ["create_model", "get_builder", "list_models", "register"]
