"""tfsd: TF-native stochastic depth layers and a model zoo built on them (README.md, docs/)."""

from __future__ import annotations

from tfsd import layers
from tfsd.layers import StochasticDepth, StochasticResidual
from tfsd.training.run_dir import restore

__version__ = "0.1.0"
__all__ = ["StochasticDepth", "StochasticResidual", "layers", "restore"]
