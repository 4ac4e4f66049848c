"""Survival schedules: per-block survival probabilities of stochastic depth, by named rule.

Every rule maps (N blocks, p = 1 − r) to N survival probabilities, block order. ``p`` is the
builders' ``survival_prob`` and ``r = 1 − p`` the rule's rate: the paper (Huang et al., ECCV 2016,
arXiv:1603.09382) calls p "p_L", timm and EfficientNet call r ``drop_path_rate`` /
``drop_connect_rate``. Which block gets exactly p (or none) depends on the rule; see each
docstring, ``docs/layers.md`` and REFERENCES.md, "Variants in the wild". Imports nothing of tfsd.
"""

from __future__ import annotations

import math
from typing import Any


def check_survival_prob(value: Any, name: str = "survival_prob") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}.")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {value!r}.")


def _check_num_blocks(num_blocks: int) -> None:
    if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
        raise ValueError(f"num_blocks must be a positive integer, got {num_blocks!r}.")


def linear_rule(num_blocks: int, final_survival: float) -> list[float]:
    """The paper's linear decay rule: ``p_l = 1 − (l / L) · (1 − p_L)``, ``l = 1 … L``.

    Source: Huang et al. 2016, eq. 4 (and its Torch code, ``main.lua``: ``deathRate = i /
    #addtables * opt.deathRate``); Composer's ``linear`` drop rate ``(i + 1) / N · r`` is the same.
    The first block survives with ``1 − r / L``, the last with exactly ``p_L``.
    L = 4, p_L = 0.8: ``[0.95, 0.9, 0.85, 0.8]``.
    """
    r = 1.0 - final_survival
    return [1.0 - (i / num_blocks) * r for i in range(1, num_blocks + 1)]


def uniform_rule(num_blocks: int, final_survival: float) -> list[float]:
    """Every block survives with ``p``: the paper's uniform baseline, Composer's ``uniform``.

    L = 4, p = 0.8: ``[0.8, 0.8, 0.8, 0.8]``.
    """
    return [float(final_survival)] * num_blocks


def efficientnet_rule(num_blocks: int, final_survival: float) -> list[float]:
    """EfficientNet's ``drop_connect``: block ``i = 0 … N−1`` drops with ``r · i / N``.

    Source: the TF EfficientNet reference (``efficientnet_model.py``, whose own parameter is this
    ``survival_prob``: ``drop_rate = 1.0 - survival_prob; survival_prob = 1.0 - drop_rate *
    float(idx) / len(self._blocks)``), keras.applications (``drop_connect_rate * b / blocks``),
    timm and torchvision EfficientNet. The first block never drops and *no* block reaches p: the
    last survives with ``1 − r · (N − 1) / N``. N must be counted after depth rounding.
    N = 4, p = 0.8: ``[1.0, 0.95, 0.9, 0.85]``.
    """
    r = 1.0 - final_survival
    return [1.0 - r * i / num_blocks for i in range(num_blocks)]


def linspace_rule(num_blocks: int, final_survival: float) -> list[float]:
    """timm's ``dpr``: drop rates ``linspace(0, r, N)`` (first block 0, last exactly r).

    Source: timm ViT / DeiT / Swin / ConvNeXt (``dpr = [x.item() for x in torch.linspace(0,
    drop_path_rate, sum(depths))]``), i.e. ``r · i / (N − 1)``. Computed here in float64 (timm's
    torch.linspace is float32, so its rates differ in the 8th digit). N = 1 gives ``[1.0]``.
    N = 4, p = 0.8: ``[1, 14/15, 13/15, 0.8]``.
    """
    r = 1.0 - final_survival
    if num_blocks == 1:
        return [1.0]
    return [1.0 - r * i / (num_blocks - 1) for i in range(num_blocks)]


def timm_resnet_rule(num_blocks: int, final_survival: float) -> list[float]:
    """timm ResNet: block ``i = 0 … N−1`` drops with ``r · i / (N − 1)``.

    Source: timm ``resnet.py``, ``make_blocks``: ``block_dpr = drop_path_rate * net_block_idx /
    (net_num_blocks - 1)  # stochastic depth linear decay rule``. The same rates as `linspace_rule`
    in exact arithmetic (kept as its own name because configs quote it); timm divides by zero for
    N = 1, here N = 1 gives ``[1.0]``. N = 4, p = 0.8: ``[1, 14/15, 13/15, 0.8]``.
    """
    return linspace_rule(num_blocks, final_survival)


# Rule name → function; the names builders and configs accept (``rule=``).
SCHEDULES = {
    "linear": linear_rule,
    "uniform": uniform_rule,
    "efficientnet": efficientnet_rule,
    "linspace": linspace_rule,
    "timm_resnet": timm_resnet_rule,
}


RULES = tuple(SCHEDULES)


def survival_schedule(num_blocks: int, final_survival: float, rule: str = "linear") -> list[float]:
    """Per-block survival probabilities of the named ``rule`` (one of `RULES`).

    =================  ===================================  ===============================
    rule               block survival (r = 1 − p)            matches
    =================  ===================================  ===============================
    ``linear``         1 − r · l / L,  l = 1 … L             paper eq. 4, Composer linear
    ``uniform``        p                                     paper baseline, Composer uniform
    ``efficientnet``   1 − r · i / N,  i = 0 … N − 1         TF EfficientNet, keras.applications
    ``linspace``       1 − r · i / (N − 1)                   timm ViT/Swin/ConvNeXt ``dpr``
    ``timm_resnet``    1 − r · i / (N − 1)                   timm ResNet ``block_dpr``
    =================  ===================================  ===============================

    Args:
      num_blocks: L (or N), the number of residual blocks, counted after any depth scaling.
      final_survival: p = 1 − r in (0, 1]; ``p_L`` for the paper's rules (0.5 in all of its
        experiments). 1.0 gives every block 1.0 under every rule.
      rule: a name of `SCHEDULES`.

    Returns:
      A list of ``num_blocks`` floats.
    """
    _check_num_blocks(num_blocks)
    check_survival_prob(final_survival, "final_survival")
    if rule not in SCHEDULES:
        raise ValueError(f"Unknown survival rule {rule!r}; expected one of {RULES}.")
    return SCHEDULES[rule](num_blocks, final_survival)


def efficientnet_survival_schedule(num_blocks: int, drop_rate: float) -> list[float]:
    """`efficientnet_rule` taking the drop-connect rate r (TF reference's argument) instead of p.

    Block ``i = 0 ... N-1`` survives with ``1 - drop_rate * i / N``.

    Args:
      num_blocks: N, the number of blocks after depth scaling.
      drop_rate: r in [0, 1); 0.2 for EfficientNet (survival 0.8).

    Returns:
      A list of N floats.
    """
    _check_num_blocks(num_blocks)
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate!r}.")
    return [1.0 - drop_rate * i / num_blocks for i in range(num_blocks)]
