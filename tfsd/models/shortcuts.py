"""`ChannelZeroPad`: the parameter-free option-A shortcut of the CIFAR ResNets (He et al. 2016).

Its own module so that `tfsd.models.resnet` stays readable; re-exported there. Where the zero
channels go differs between the references that tfsd imports from or reproduces.
"""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="tfsd")
class ChannelZeroPad(keras.layers.Layer):
    """Pads with zero channels up to ``channels``: the option-A shortcut (He et al.).

    ``placement="after"`` appends every zero channel, as Torch ``nn.Padding(1, pad, 3)`` in the
    stochastic-depth paper's code (yueatsprograms/Stochastic_Depth): tfsd's default, since tfsd
    reproduces that paper. ``"symmetric"`` puts ``pad // 2`` before and the rest after, as
    akamaster/pytorch_resnet_cifar10's ``LambdaLayer`` (``F.pad(x[:, :, ::2, ::2], (0, 0, 0,
    0, planes // 4, planes // 4))``): needed for weights trained with that code.

    Args:
      channels: number of output channels, at least the number of input channels.
      placement: "after" or "symmetric".
      **kwargs: standard Keras layer arguments.
    """

    PLACEMENTS = ("after", "symmetric")

    def __init__(self, channels: int, placement: str = "after", **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}.")
        if placement not in self.PLACEMENTS:
            raise ValueError(f"placement must be one of {self.PLACEMENTS}, got {placement!r}.")
        self.channels = channels
        self.placement = placement

    def split(self, input_channels: int) -> tuple[int, int]:
        """(zero channels before, zero channels after) for ``input_channels`` inputs."""
        pad = self._pad(input_channels)
        before = pad // 2 if self.placement == "symmetric" else 0
        return before, pad - before

    def _pad(self, input_channels: int) -> int:
        pad = self.channels - input_channels
        if pad < 0:
            raise ValueError(
                f"{self.name}: cannot pad {input_channels} channels down to {self.channels}."
            )
        return pad

    def call(self, x: Any) -> Any:
        before, after = self.split(x.shape[-1])
        if before == after == 0:
            return x
        return keras.ops.pad(x, [[0, 0]] * (len(x.shape) - 1) + [[before, after]])

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        self._pad(input_shape[-1])
        return (*input_shape[:-1], self.channels)

    def get_config(self) -> dict:
        config = super().get_config()
        config["channels"] = self.channels
        config["placement"] = self.placement
        return config
