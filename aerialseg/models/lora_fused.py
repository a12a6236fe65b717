"""A faster forward for peft's LoRA ``Linear`` layers, with the same maths.

peft computes ``base(x) + lora_B(lora_A(dropout(x))) * scaling``: besides the rank-r matmuls, a
full-size product with ``scaling`` and a full-size sum, two memory-bound passes over every
adapted layer's output (on SAM's 4096-token MLP that is 4096 x 3072 values per pass). Here:

* in fp32 without gradients for the adapter and without dropout (inference, or evaluation during
  training), the low-rank update is folded into the weight, ``W + scaling * B A``, and the layer
  is a single matmul (forming ``B A`` costs ``out x r x in``: 0.4 % of the 4096-row matmul);
* otherwise the low-rank product is accumulated into the base output in place with one
  ``addmm_`` (scaling as its ``alpha``), so no extra full-size tensor is made.

In training, the LoRA dropout (``nn.Dropout``, p = 0.1 in the recipes) draws its mask by
:func:`dropout_noise` instead of ``bernoulli_`` over the whole input: the positions of the dropped
elements are the partial sums of geometric gaps, i.e. exactly the failures of independent
Bernoulli(1 - p) trials, at a tenth of the random numbers (``bernoulli_`` was 5-8 % of a ClipSAM
training step on CPU). Kept elements are scaled by 1 / (1 - p) as ``F.dropout`` does; only the
random stream differs, not the distribution.

Anything else (several active adapters, DoRA, merged weights, extra arguments) runs peft's own
forward. The results differ from peft's only by floating-point rounding.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


def dropout_noise(
    shape: torch.Size | tuple[int, ...],
    p: float,
    dtype: torch.dtype,
    device=None,
    gaps_per_draw: int | None = None,
) -> torch.Tensor:
    """``F.dropout``'s multiplier of a ``shape`` tensor: 0 with probability ``p``, else
    ``1 / (1 - p)``, independently per element (0 < p < 1), from torch's default generator.

    The dropped positions of the flattened tensor are the running sums of Geometric(p) gaps
    (trials up to and including the next failure), which is the law of the failures of
    independent Bernoulli(1 - p) trials; about ``p * numel`` random numbers instead of ``numel``.
    Gaps are drawn ``gaps_per_draw`` at a time (default: the mean number plus 8 standard
    deviations, so one draw nearly always covers the tensor).
    """
    if not 0 < p < 1:
        raise ValueError(f"dropout probability must be in (0, 1), got {p}")
    numel = math.prod(shape)
    noise = torch.full((numel,), 1 / (1 - p), dtype=dtype, device=device)
    if gaps_per_draw is None:
        gaps_per_draw = int(numel * p + 8 * math.sqrt(numel * p * (1 - p))) + 16
    last = 0  # 1-based position of the last failure drawn so far
    while True:
        gaps = torch.empty(gaps_per_draw, dtype=torch.float64, device=device).geometric_(p)
        positions = gaps.cumsum_(0).add_(last).to(torch.int64)
        inside = positions[: int(torch.searchsorted(positions, numel, side="right"))]
        noise.index_fill_(0, inside - 1, 0)
        if len(inside) < gaps_per_draw:
            return noise.view(shape)
        last = int(positions[-1])


def _dropout(dropout: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``dropout(x)`` for peft's LoRA dropout module, with :func:`dropout_noise` for the mask."""
    if isinstance(dropout, nn.Dropout) and dropout.training and 0 < dropout.p < 1:
        return x * dropout_noise(x.shape, dropout.p, x.dtype, x.device)
    return dropout(x)


@functools.cache
def _fused_class(peft_linear: type) -> type:
    class FusedLoraLinear(peft_linear):
        def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            """... x in_features -> ... x out_features."""
            adapters = self.active_adapters
            if (
                args
                or kwargs
                or self.disable_adapters
                or self.merged
                or len(adapters) != 1
                or adapters[0] not in self.lora_A
                or self.use_dora.get(adapters[0], False)
            ):
                return super().forward(x, *args, **kwargs)
            name = adapters[0]
            lora_a, lora_b = self.lora_A[name].weight, self.lora_B[name].weight
            scaling, dropout = self.scaling[name], self.lora_dropout[name]
            base = self.base_layer
            adapter_trains = torch.is_grad_enabled() and (
                lora_a.requires_grad or lora_b.requires_grad
            )
            no_dropout = isinstance(dropout, nn.Identity) or not dropout.training
            # Folding is exact only in fp32: in bf16 the small low-rank update would be rounded
            # into the weight's 8-bit mantissa and partly lost.
            full_precision = base.weight.dtype == torch.float32 and not torch.is_autocast_enabled(
                x.device.type
            )
            if not adapter_trains and no_dropout and full_precision:
                weight = torch.addmm(base.weight, lora_b, lora_a, alpha=scaling)
                return F.linear(x, weight, base.bias)
            result = base(x)
            low_rank = F.linear(_dropout(dropout, x), lora_a)
            flat = result.view(-1, result.shape[-1])
            flat.addmm_(
                low_rank.reshape(-1, low_rank.shape[-1]).to(result.dtype),
                lora_b.t().to(result.dtype),
                alpha=scaling,
            )
            return result

    return FusedLoraLinear


def use_fused_lora(module: nn.Module) -> int:
    """Switch every plain peft LoRA ``Linear`` in ``module`` to the fused forward, in place
    (parameters and state-dict keys unchanged). Returns the number of layers switched."""
    from peft.tuners.lora.layer import Linear

    fused = _fused_class(Linear)
    count = 0
    for layer in module.modules():
        if type(layer) is Linear and isinstance(layer.base_layer, nn.Linear):
            layer.__class__ = fused
            count += 1
    return count
