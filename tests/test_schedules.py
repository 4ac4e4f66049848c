"""Named survival schedules of tfsd.schedules (re-exported by tfsd.layers).

Schedule values are hand-computed for N = 4 blocks and p = 0.8 (r = 0.2), from the formula each
source writes (REFERENCES.md, "Variants in the wild").
"""

import numpy as np
import pytest

from tfsd import schedules

HAND = {
    # paper eq. 4: 1 − (l/4)·0.2, l = 1…4
    "linear": [0.95, 0.90, 0.85, 0.80],
    "uniform": [0.8, 0.8, 0.8, 0.8],
    # TF EfficientNet: 1 − 0.2·i/4, i = 0…3 (never reaches 0.8)
    "efficientnet": [1.0, 0.95, 0.90, 0.85],
    # timm dpr = linspace(0, 0.2, 4) = 0, 1/15, 2/15, 0.2
    "linspace": [1.0, 14 / 15, 13 / 15, 0.8],
    # timm ResNet 0.2·i/3
    "timm_resnet": [1.0, 14 / 15, 13 / 15, 0.8],
}


def test_every_rule_is_tested_by_hand():
    assert sorted(HAND) == sorted(schedules.RULES) == sorted(schedules.SCHEDULES)


@pytest.mark.parametrize("rule", sorted(HAND))
def test_schedule_against_hand_computed_values(rule):
    got = schedules.survival_schedule(4, 0.8, rule)
    np.testing.assert_allclose(got, HAND[rule], rtol=0, atol=1e-15)
    assert schedules.SCHEDULES[rule](4, 0.8) == got
    assert schedules.survival_schedule(7, 1.0, rule) == [1.0] * 7  # p = 1: no stochastic depth
    assert len(schedules.survival_schedule(1, 0.5, rule)) == 1


def test_schedules_match_their_sources_formulas():
    n, r = 13, 0.3
    np.testing.assert_allclose(
        schedules.survival_schedule(n, 1 - r, "linspace"), 1 - np.linspace(0, r, n), atol=1e-15
    )
    # the existing EfficientNet helper takes r; both give the same floats.
    assert schedules.survival_schedule(
        n, 0.8, "efficientnet"
    ) == schedules.efficientnet_survival_schedule(n, 1.0 - 0.8)
    assert schedules.survival_schedule(1, 0.5, "timm_resnet") == [1.0]  # timm divides by zero here
