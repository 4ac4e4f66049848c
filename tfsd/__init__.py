"""tfsd: TF-native stochastic depth layers and a model zoo built on them."""

from tfsd import layers
from tfsd.layers import StochasticDepth, StochasticResidual

__version__ = "0.1.0"
__all__ = ["StochasticDepth", "StochasticResidual", "layers"]
