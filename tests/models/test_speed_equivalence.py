"""The speed-ups compute what the reference code computes.

Referees: segment-anything's own ``Attention.forward`` (``SamParts(attn_impl='eager')`` runs it
unchanged) and peft's own LoRA ``Linear.forward``. The optimised ClipSAM (tiled SDPA attention
with a hand-written backward, fused LoRA) and the reference ClipSAM (both referees) are built from
the same seed and checkpoint, with non-zero relative-position tables and LoRA ``B`` matrices (both
start at zero, which would hide a wrong bias or a wrong gradient), and must agree on logits,
every loss and the gradient of every trainable parameter.
"""

from __future__ import annotations

import copy

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLoraLinear
from torch import nn

from aerialseg.models import lora_fused
from aerialseg.models import sam as sam_module
from aerialseg.models.lora import apply_lora
from tests.models.conftest import BLUE_BOX, RED_BOX, build_model, square_batch

BATCH = [("the red square", RED_BOX), ("the blue square", BLUE_BOX)]


def _model(cfg, attn_impl: str):
    cfg = copy.deepcopy(cfg)
    cfg.model.sam.attn_impl = attn_impl
    model = build_model(cfg)
    if attn_impl == "eager":
        _use_peft_forward(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "rel_pos" in name or "lora_B" in name:
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model


def _use_peft_forward(model: nn.Module) -> int:
    layers = [m for m in model.modules() if isinstance(m, PeftLoraLinear)]
    for layer in layers:
        layer.__class__ = PeftLoraLinear
    return len(layers)


def _train_outputs(model, batch):
    model.train()
    data = model.data_preprocessor(copy.deepcopy(batch), True)
    losses = model.loss(**data)
    sum(value for key, value in losses.items() if key.startswith("loss")).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach() for k, v in losses.items()}, grads


# 64 elements per tile splits every attention into one-row, one-head tiles.
@pytest.mark.parametrize("tile_elements", [64, sam_module._TILE_ELEMENTS])
def test_fused_attention_matches_segment_anything(tiny_cfg, monkeypatch, tile_elements):
    monkeypatch.setattr(sam_module, "_TILE_ELEMENTS", tile_elements)
    fused, eager = _model(tiny_cfg, "sdpa"), _model(tiny_cfg, "eager")
    batch = square_batch(BATCH)

    fused_losses, fused_grads = _train_outputs(fused, batch)
    eager_losses, eager_grads = _train_outputs(eager, batch)
    assert fused_losses.keys() == eager_losses.keys()
    for key in eager_losses:
        torch.testing.assert_close(fused_losses[key], eager_losses[key], rtol=1e-5, atol=1e-6)
    assert fused_grads.keys() == eager_grads.keys()
    # LoRA of the SAM attention sits before the fused backward: its gradients test it.
    assert any("image_encoder.blocks.1.attn.qkv.lora_A" in name for name in fused_grads)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)

    with torch.no_grad():
        fused.eval(), eager.eval()
        inputs = fused.data_preprocessor(copy.deepcopy(batch), False)["inputs"]
        torch.testing.assert_close(fused._forward(inputs), eager._forward(inputs))


def test_attention_implementation_is_validated():
    with pytest.raises(ValueError, match="attn_impl must be one of"):
        sam_module.SamParts(arch="tiny", attn_impl="flash")


def test_the_fused_backward_matches_autograd_on_random_bias():
    """The autograd Function alone against autograd through the plain maths, with a bias whose
    factors are independent inputs (not derived from q), so each gradient is checked apart."""
    generator = torch.Generator().manual_seed(0)
    heads, kh, kw, dim = 3, 3, 5, 8
    tensors = [
        torch.randn(shape, generator=generator, dtype=torch.float64, requires_grad=True)
        for shape in [(heads, kh * kw, dim)] * 3 + [(heads, kh * kw, kh), (heads, kh * kw, kw)]
    ]

    def reference(q, k, v, rel_h, rel_w):
        bias = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(2)
        return torch.softmax(q @ k.transpose(1, 2) * 0.3 + bias, dim=-1) @ v

    assert torch.autograd.gradcheck(
        lambda *t: sam_module._RelPosAttention.apply(*t, 0.3), tensors, eps=1e-6, atol=1e-6
    )
    out = sam_module._RelPosAttention.apply(*tensors, 0.3)
    torch.testing.assert_close(out, reference(*tensors))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize(("kh", "kw"), [(14, 14), (3, 5), (64, 64)])
def test_rel_pos_bias_equals_the_broadcast_sum(dtype, kh, kw):
    """bf16 windows take the 0/1-matrix product instead of the add: bit for bit the same sum,
    each cell (i, j) from row i of rel_h and column j of rel_w."""
    generator = torch.Generator().manual_seed(0)
    rel_h = torch.randn(6, kh * kw, kh, generator=generator).mul(100).to(dtype)
    rel_w = torch.randn(6, kh * kw, kw, generator=generator).to(dtype)
    expected = (rel_h[..., :, None] + rel_w[..., None, :]).flatten(2)
    assert torch.equal(sam_module._rel_pos_bias(rel_h, rel_w), expected)


class _Replay(nn.Module):
    """A dropout that multiplies by recorded masks, in order (identity in eval mode)."""

    def __init__(self, noises):
        super().__init__()
        self.noises = noises

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * next(self.noises) if self.training else x


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_fused_lora_matches_peft(dropout, monkeypatch):
    torch.manual_seed(0)
    fused = nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 8))
    apply_lora(fused, dict(r=4, alpha=8, dropout=dropout, target_modules=["0", "2"]), "test")
    with torch.no_grad():
        for name, parameter in fused.named_parameters():
            if "lora_B" in name:
                parameter.normal_()
    reference = copy.deepcopy(fused)
    assert _use_peft_forward(reference) == 2
    assert all(type(m) is PeftLoraLinear for m in reference.modules() if "Lora" in type(m).__name__)
    x = torch.randn(3, 5, 12)
    # The fused layers draw their dropout masks with lora_fused.dropout_noise (another random
    # stream than nn.Dropout's); peft's forward replays exactly those masks.
    noises = []
    if dropout:
        draw = lora_fused.dropout_noise

        def record(*args, **kwargs):
            noises.append(draw(*args, **kwargs))
            return noises[-1]

        monkeypatch.setattr(lora_fused, "dropout_noise", record)
        replay = iter(noises)
        for layer in reference.modules():
            if isinstance(layer, PeftLoraLinear):
                layer.lora_dropout[layer.active_adapters[0]] = _Replay(replay)

    for model in (fused, reference):  # training
        model.train()
        model.output = model(x)
        model.output.square().sum().backward()
    if dropout:
        assert len(noises) == 2 and all((noise == 0).any() for noise in noises)
    torch.testing.assert_close(fused.output, reference.output)
    for (name, p_fused), p_reference in zip(fused.named_parameters(), reference.parameters()):
        if p_fused.requires_grad:
            torch.testing.assert_close(p_fused.grad, p_reference.grad, msg=name)

    fused.eval(), reference.eval()
    with torch.no_grad():  # inference folds the update into the weight (fp32)
        torch.testing.assert_close(fused(x), reference(x))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # not folded in bf16
            expected = reference(x).float()
            # bf16 rounds in another order: within a few bf16 steps of the output's scale
            tolerance = 2**-6 * expected.abs().max().item()
            torch.testing.assert_close(fused(x).float(), expected, rtol=0, atol=tolerance)
