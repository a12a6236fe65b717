"""The prompter's activation maths against a plain computation written out in loops.

The referee below spells out clipsam.md §1.3 steps 5-9 with Python floats (no einsum, no
broadcasting): cosine similarity per (token, cell), SigLIP's ``exp(logit_scale)`` and
``logit_bias``, a sigmoid, the mean over the *real* tokens only, the 1:1 average with the patches,
the global map and its sigmoid weighting. The ClipSAM tests check the wiring around it: SigLIP's
own scalars reach the prompter, and SAM's mask input receives the global map as logits.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from aerialseg.models.prompter import ActivationPrompter
from tests.models.conftest import BLUE_BOX, RED_BOX, build_model, square_batch

WIDTH, DIM, GRID, LENGTH = 6, 8, 5, 7
LOGIT_SCALE, LOGIT_BIAS = math.log(7.0), -2.5


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_activations(patches, tokens, mask, pooled, logit_scale, logit_bias):
    """Loop version of the prompter's fusion.

    Args:
        patches: B x C x g x g; tokens: B x L x C; mask: B x L; pooled: B x C (tensors).
        logit_scale, logit_bias: floats, SigLIP's raw parameters (the scale is a log).

    Returns:
        the fused features B x 3C x g x g and the global logits B x 1 x g x g (float64 tensors).
    """
    scale = math.exp(logit_scale)
    batch, width, rows, cols = patches.shape
    V, T, M, t = patches.tolist(), tokens.tolist(), mask.tolist(), pooled.tolist()
    fused = [[[[0.0] * cols for _ in range(rows)] for _ in range(3 * width)] for _ in range(batch)]
    global_logits = [[[[0.0] * cols for _ in range(rows)]] for _ in range(batch)]
    for b in range(batch):
        for r in range(rows):
            for c in range(cols):
                cell = [V[b][ch][r][c] for ch in range(width)]
                real = [T[b][k] for k in range(len(M[b])) if M[b][k] == 1]
                local = sum(_sigmoid(scale * _cosine(tok, cell) + logit_bias) for tok in real)
                local /= len(real)
                logit = scale * _cosine(t[b], cell) + logit_bias
                global_logits[b][0][r][c] = logit
                for ch in range(width):
                    value = cell[ch]
                    fused[b][ch][r][c] = 0.5 * (value * local + value)
                    fused[b][width + ch][r][c] = value * _sigmoid(logit)
                    fused[b][2 * width + ch][r][c] = value
    return torch.tensor(fused, dtype=torch.float64), torch.tensor(
        global_logits, dtype=torch.float64
    )


def reference_tokens(prompter, fused, grid_pe, groups: int) -> torch.Tensor:
    """B x 3C x g x g fused features -> B x D x g' x g' prompt grid, with functional ops."""

    def conv_norm_gelu(x, block, stride, padding):
        x = F.conv2d(x, block.conv.weight, block.conv.bias, stride=stride, padding=padding)
        x = F.group_norm(x, groups, block.norm.weight, block.norm.bias, eps=block.norm.eps)
        return F.gelu(x)

    with torch.no_grad():
        x = conv_norm_gelu(fused, prompter.reduce, 1, 0) + grid_pe
        for block in prompter.downsample:
            x = conv_norm_gelu(x, block, 2, 1)
        return F.conv2d(x, prompter.project.weight, prompter.project.bias)


def _inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.zeros(3, LENGTH, dtype=torch.long)
    mask[0, :3] = 1
    mask[1, :5] = 1
    mask[2, :1] = 1  # a single real token
    tokens = torch.randn(3, LENGTH, WIDTH, generator=generator)
    # Padding positions carry features of their own (as a text tower produces): counting them
    # in the mean would change the result.
    tokens[mask == 0] = 3.0 * torch.randn(int((mask == 0).sum()), WIDTH, generator=generator)
    return dict(
        patches=torch.randn(3, WIDTH, GRID, GRID, generator=generator),
        text_tokens=tokens,
        text_mask=mask,
        text_pooled=torch.randn(3, WIDTH, generator=generator),
        logit_scale=torch.tensor([LOGIT_SCALE]),
        logit_bias=torch.tensor([LOGIT_BIAS]),
        grid_pe=torch.randn(1, DIM, GRID, GRID, generator=generator),
    )


def _prompter() -> ActivationPrompter:
    torch.manual_seed(0)
    prompter = ActivationPrompter(
        WIDTH, DIM, num_downsample=1, norm_cfg=dict(type="GN", num_groups=2)
    )
    return prompter.eval()


def _capture_input(module: torch.nn.Module, store: list):
    return module.register_forward_pre_hook(lambda _, args: store.append(args[0].detach()))


def test_local_and_global_activations_equal_the_loop_computation():
    torch.manual_seed(0)
    prompter = ActivationPrompter(
        WIDTH, DIM, num_downsample=1, norm_cfg=dict(type="GN", num_groups=2)
    )
    prompter.eval()
    inputs = _inputs()
    fused_seen: list = []
    handle = _capture_input(prompter.reduce, fused_seen)
    with torch.no_grad():
        tokens, global_logits = prompter(**inputs)
    handle.remove()
    fused, expected_logits = reference_activations(
        inputs["patches"],
        inputs["text_tokens"],
        inputs["text_mask"],
        inputs["text_pooled"],
        LOGIT_SCALE,
        LOGIT_BIAS,
    )
    torch.testing.assert_close(global_logits.double(), expected_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_seen[0].double(), fused, atol=1e-5, rtol=1e-5)
    assert (global_logits < 0).any() and (global_logits > 0).any()  # scale and bias both matter

    # Tokens: 1x1 conv + GroupNorm + GELU, plus SAM's positional encoding, 3x3 stride-2 conv +
    # GroupNorm + GELU, 1x1 projection (clipsam.md 1.3 step 8), written out with functional ops on
    # the prompter's weights; one token per output cell in row-major order.
    grid = reference_tokens(prompter, fused.float(), inputs["grid_pe"], groups=2)
    rows, cols = grid.shape[-2:]
    assert tokens.shape == (3, rows * cols, DIM) and (rows, cols) == (3, 3)
    for b in range(3):
        for r in range(rows):
            for c in range(cols):
                torch.testing.assert_close(tokens[b, r * cols + c], grid[b, :, r, c])


def test_the_default_prompter_is_the_rsrefseg_one():
    """SigLIP so400m (1152) -> SAM's 256-wide prompts: GroupNorm(32) + GELU after the 1x1 and
    both stride-2 convs, 27 x 27 patches -> 49 tokens."""
    torch.manual_seed(0)
    prompter = ActivationPrompter(1152).eval()
    for block in (prompter.reduce, *prompter.downsample):
        assert isinstance(block.norm, torch.nn.GroupNorm) and block.norm.num_groups == 32
        assert isinstance(block.activate, torch.nn.GELU)
    assert len(prompter.downsample) == 2 and prompter.project.out_channels == 256
    generator = torch.Generator().manual_seed(0)
    patches = torch.randn(1, 1152, 27, 27, generator=generator)
    fused = torch.cat([patches, patches, patches], dim=1)
    pe = torch.randn(1, 256, 27, 27, generator=generator)
    with torch.no_grad():
        grid = prompter.project(prompter.downsample(prompter.reduce(fused) + pe))
    torch.testing.assert_close(grid, reference_tokens(prompter, fused, pe, groups=32))
    assert grid.shape == (1, 256, 7, 7)


def test_a_real_token_changes_the_local_map_but_padding_never_does():
    torch.manual_seed(0)
    prompter = ActivationPrompter(
        WIDTH, DIM, num_downsample=1, norm_cfg=dict(type="GN", num_groups=2)
    )
    prompter.eval()
    inputs = _inputs(seed=1)
    seen: list = []
    handle = _capture_input(prompter.reduce, seen)
    with torch.no_grad():
        prompter(**inputs)
        changed_padding = copy.deepcopy(inputs)
        changed_padding["text_tokens"][0, 5] += 10.0  # a padding position of sample 0
        prompter(**changed_padding)
        changed_real = copy.deepcopy(inputs)
        changed_real["text_tokens"][0, 1] += 10.0  # a real token of sample 0
        prompter(**changed_real)
    handle.remove()
    torch.testing.assert_close(seen[1], seen[0])
    assert not torch.allclose(seen[2][0, :WIDTH], seen[0][0, :WIDTH])


def test_clipsam_feeds_siglip_scalars_and_the_global_logits_to_sam(tiny_cfg):
    """In the full model: the prompter gets SigLIP's raw logit scale/bias and the preprocessor's
    padding mask, SAM's mask input gets the global map as *logits* (resized bilinearly to its mask
    input size), and the decoder gets the prompter's tokens and that dense embedding."""
    model = build_model(tiny_cfg).eval()
    with torch.no_grad():
        model.vlm.logit_bias.fill_(-1.5)
    seen: dict = {}

    def keep(name: str, value) -> None:  # hooks return None: they only observe
        seen.setdefault(name, value)

    downscaling = model.sam.prompt_encoder.mask_downscaling
    handles = [
        model.prompter.register_forward_hook(
            lambda _, args, output: keep("prompter", (args, output))
        ),
        downscaling.register_forward_pre_hook(lambda _, args: keep("mask_input", args[0])),
        downscaling.register_forward_hook(lambda _, args, output: keep("dense", output)),
        model.sam.mask_decoder.register_forward_hook(
            lambda _, args, kwargs, output: keep("decoder", kwargs), with_kwargs=True
        ),
    ]
    batch = square_batch([("the red square", RED_BOX), ("the blue square on the right", BLUE_BOX)])
    with torch.no_grad():
        data = model.data_preprocessor(copy.deepcopy(batch), False)
        model._forward(data["inputs"])
    for handle in handles:
        handle.remove()

    (patches, text_tokens, text_mask, text_pooled, scale, bias, _), outputs = seen["prompter"]
    assert torch.equal(scale, model.vlm.logit_scale) and torch.equal(bias, model.vlm.logit_bias)
    assert torch.equal(text_mask, data["inputs"]["text_mask"])
    assert text_mask.sum(1).tolist() == [4, 7]  # words + </s>, padding excluded
    with torch.no_grad():  # the text tower saw the mask too (the tiny config passes it)
        text = model.vlm.text(input_ids=data["inputs"]["input_ids"], attention_mask=text_mask)
    torch.testing.assert_close(text_tokens, text.last_hidden_state)
    torch.testing.assert_close(text_pooled, text.pooler_output)
    _, expected_logits = reference_activations(
        patches, text_tokens, text_mask, text_pooled, float(scale), float(bias)
    )
    sparse, global_logits = outputs
    torch.testing.assert_close(global_logits.double(), expected_logits, atol=1e-4, rtol=1e-4)

    mask_input = seen["mask_input"]
    expected_input = F.interpolate(
        global_logits, size=model.sam.mask_input_size, mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(mask_input, expected_input)
    assert mask_input.min() < 0  # logits, not probabilities
    decoder = seen["decoder"]
    # The tiny batch has one prompt per image, so the decoder call is for image 0, prompt 0.
    torch.testing.assert_close(decoder["sparse_prompt_embeddings"], sparse[:1])
    torch.testing.assert_close(decoder["dense_prompt_embeddings"], seen["dense"][:1])
