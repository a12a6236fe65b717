"""The LoRA dropout mask of the fused layers (``lora_fused.dropout_noise``) has the law of
``F.dropout``'s: independent per element, 0 with probability p, else 1 / (1 - p).

Referee: the Bernoulli law itself. Frequencies are compared with their expectations within 5
standard deviations (a false alarm about once in 1.7 million runs for each check); the masks come
from fixed seeds, so the tests are deterministic.
"""

from __future__ import annotations

import math

import pytest
import torch

from aerialseg.models.lora_fused import dropout_noise


def _within(observed: float, expected: float, trials: int) -> bool:
    return abs(observed - expected) <= 5 * math.sqrt(expected * (1 - expected) / trials)


def test_each_position_and_pair_is_an_independent_coin():
    """Every position of a small tensor (first and last included) is dropped half the time at
    p = 0.5, every pair of positions together a quarter of the time, kept values are 2."""
    torch.manual_seed(0)
    draws = 4000
    noise = torch.stack([dropout_noise((2, 3), 0.5, torch.float32) for _ in range(draws)])
    assert set(noise.unique().tolist()) == {0.0, 2.0}
    dropped = (noise == 0).flatten(1).double()
    for position, rate in enumerate(dropped.mean(0).tolist()):
        assert _within(rate, 0.5, draws), (position, rate)
    both = (dropped.T @ dropped) / draws
    for i in range(6):
        for j in range(i + 1, 6):
            assert _within(both[i, j].item(), 0.25, draws), (i, j, both[i, j].item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rate_and_independence_on_a_large_tensor(dtype):
    """p = 0.1 as in the recipes: the dropped share, in each half of the tensor, and the share of
    neighbouring pairs that are both dropped (p squared if independent)."""
    torch.manual_seed(1)
    noise = dropout_noise((300, 700), 0.1, dtype)
    assert noise.shape == (300, 700) and noise.dtype == dtype
    assert set(noise.unique().float().tolist()) == {0.0, torch.tensor(1 / 0.9, dtype=dtype).item()}
    dropped = (noise == 0).flatten().double()
    half = len(dropped) // 2
    for part in (dropped, dropped[:half], dropped[half:]):
        assert _within(part.mean().item(), 0.1, len(part))
    pairs = dropped[:-1] * dropped[1:]
    assert _within(pairs.mean().item(), 0.01, len(pairs))


def test_drawing_the_gaps_in_rounds_gives_the_same_mask():
    """Gaps drawn one, three or all at a time consume the same random stream: equal masks."""
    masks = []
    for gaps_per_draw in (1, 3, None):
        torch.manual_seed(2)
        masks.append(dropout_noise((7, 11), 0.3, torch.float32, gaps_per_draw=gaps_per_draw))
    assert (masks[0] == 0).any() and (masks[0] != 0).any()
    for mask in masks[1:]:
        torch.testing.assert_close(mask, masks[0], rtol=0, atol=0)


@pytest.mark.parametrize("p", [0.0, 1.0, -0.1])
def test_probability_outside_the_open_interval_is_refused(p):
    with pytest.raises(ValueError, match="dropout probability must be in"):
        dropout_noise((4,), p, torch.float32)
