"""SigLIP / SigLIP 2 image and text towers from a local Hugging Face checkpoint folder.

Both HF model types are supported:

* ``siglip`` (``SiglipModel``): SigLIP 1 and the fixed-resolution SigLIP 2 releases such as
  ``google/siglip2-so400m-patch14-384`` (27 x 27 patch grid, width 1152, 64 text positions);
* ``siglip2`` (``Siglip2Model``): the NaFlex releases; images are fed as a fixed square grid of
  ``sqrt(num_patches)`` patches per side, so the patch features form a map like SigLIP 1's.

Only the parts ClipSAM uses are kept: the vision trunk (the attention-pooling head is dropped; its
output is never used), the text tower with its ``head`` (the pooled text vector), and the
``logit_scale`` / ``logit_bias`` of the contrastive loss.

Shapes: B images or texts, s = ``image_size``, g = grid side, C = width, L = text length (64).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from aerialseg.models.checkpoint_keys import CheckpointMismatchError

SUPPORTED_MODEL_TYPES = ("siglip", "siglip2")


def _build_random(config: dict):
    from transformers import Siglip2Config, Siglip2Model, SiglipConfig, SiglipModel

    config = dict(config)
    model_type = config.pop("model_type", "siglip")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model_type must be one of {SUPPORTED_MODEL_TYPES}, got '{model_type}'")
    config_class, model_class = (
        (SiglipConfig, SiglipModel) if model_type == "siglip" else (Siglip2Config, Siglip2Model)
    )
    return model_class(config_class(**config))


def load_siglip_model(path: str | os.PathLike, attn_implementation: str = "sdpa"):
    """Load a ``SiglipModel``/``Siglip2Model`` from a local folder, failing on any key mismatch.

    Raises:
        FileNotFoundError: the folder or its ``config.json`` does not exist.
        ValueError: the folder holds another kind of model.
        CheckpointMismatchError: weights are missing, unexpected or of another shape.
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel

    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"SigLIP checkpoint folder '{folder}' has no config.json (expected a local Hugging "
            "Face folder such as checkpoints/siglip2-so400m-patch14-384/)"
        )
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"'{folder}' holds a '{config.model_type}' model, expected one of "
            f"{SUPPORTED_MODEL_TYPES} (a SigLIP or SigLIP 2 checkpoint)"
        )
    try:
        model, info = AutoModel.from_pretrained(
            folder,
            local_files_only=True,
            output_loading_info=True,
            dtype=torch.float32,
            attn_implementation=attn_implementation,
        )
    except (OSError, RuntimeError, SafetensorError) as error:
        # transformers raises on size mismatches and unreadable weight files (safetensors' own
        # error for a damaged model.safetensors).
        raise CheckpointMismatchError(
            f"cannot load SigLIP weights from '{folder}': {error}"
        ) from None
    problems = {
        name: sorted(map(str, info.get(name) or []))
        for name in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    problems = {name: keys for name, keys in problems.items() if keys}
    if problems:
        detail = "; ".join(
            f"{len(keys)} {name.replace('_', ' ')}: {', '.join(keys[:8])}"
            for name, keys in problems.items()
        )
        raise CheckpointMismatchError(
            f"SigLIP checkpoint '{folder}' does not match its config.json: {detail}. "
            "The weight files are incomplete or belong to another model."
        )
    return model


class SiglipTowers(nn.Module):
    """The SigLIP vision and text towers used by ClipSAM.

    Args:
        pretrained: local HF checkpoint folder. Exactly one of ``pretrained`` / ``config``.
        config: HF config dict (``model_type`` ``'siglip'`` or ``'siglip2'`` plus
            ``text_config``/``vision_config``) for a randomly initialised model.
        text_attention_mask: pass the padding mask to the text tower. SigLIP was trained on
            fixed-length padded text *without* a mask, so the default is False.
        attn_implementation: HF attention backend (``'sdpa'`` or ``'eager'``).
        gradient_checkpointing: recompute encoder layers in backward.
    """

    def __init__(
        self,
        pretrained: str | None = None,
        config: dict | None = None,
        text_attention_mask: bool = False,
        attn_implementation: str = "sdpa",
        gradient_checkpointing: bool = False,
    ):
        super().__init__()
        if (pretrained is None) == (config is None):
            raise ValueError("give exactly one of 'pretrained' (a folder) or 'config' (a dict)")
        if pretrained is not None:
            model = load_siglip_model(pretrained, attn_implementation)
        else:
            model = _build_random(config)
            model.config._attn_implementation = attn_implementation
        self.pretrained = pretrained
        self.model_type = model.config.model_type
        self.text_attention_mask = text_attention_mask
        vision_config, text_config = model.config.vision_config, model.config.text_config
        if vision_config.hidden_size != text_config.hidden_size:
            raise ValueError(
                "ClipSAM compares text tokens with image patches, so the text and vision widths "
                f"must match; this checkpoint has {text_config.hidden_size} and "
                f"{vision_config.hidden_size}"
            )
        self.width = vision_config.hidden_size
        self.patch_size = vision_config.patch_size
        if self.model_type == "siglip":
            self.grid_size = vision_config.image_size // vision_config.patch_size
            self.image_size = vision_config.image_size
        else:
            self.grid_size = int(round(vision_config.num_patches**0.5))
            self.image_size = self.grid_size * self.patch_size
        self.text_length = text_config.max_position_embeddings

        self.vision = model.vision_model
        self.text = model.text_model
        self.logit_scale = model.logit_scale
        self.logit_bias = model.logit_bias
        if getattr(self.vision, "use_head", False):
            # The attention-pooled image vector is never used; dropping the head keeps it out of
            # the parameter counts, LoRA targets and DDP's unused-parameter checks.
            del self.vision.head
            self.vision.use_head = False
        if gradient_checkpointing:
            for tower in (self.vision, self.text):
                tower.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs=dict(use_reentrant=False)
                )

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """B x 3 x s x s pixels (normalised with the processor's statistics) -> B x C x g x g."""
        batch = pixels.shape[0]
        if self.model_type == "siglip":
            embeddings = self.vision.embeddings(pixels)
        else:
            g, p = self.grid_size, self.patch_size
            # The NaFlex patch layout of Siglip2ImageProcessor: rows, columns, then p x p x C.
            patches = pixels.reshape(batch, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1)
            patches = patches.reshape(batch, g * g, p * p * 3)
            shapes = torch.tensor([[g, g]] * batch, device=pixels.device)
            embeddings = self.vision.embeddings(patches, shapes)
        hidden = self.vision.encoder(inputs_embeds=embeddings).last_hidden_state
        hidden = self.vision.post_layernorm(hidden)
        return hidden.transpose(1, 2).reshape(batch, self.width, self.grid_size, self.grid_size)

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B x L token ids (padded to L) -> per-token features B x L x C and pooled B x C.

        The pooled vector is the text ``head`` applied at the last position, as in SigLIP; with
        fixed-length padding it never depends on the other texts of the batch.
        """
        output = self.text(
            input_ids=input_ids,
            attention_mask=attention_mask if self.text_attention_mask else None,
        )
        return output.last_hidden_state, output.pooler_output
