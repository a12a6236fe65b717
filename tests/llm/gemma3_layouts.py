"""Gemma 3 weight names as two referees read them: hub checkpoints and vLLM's loader.

**Hub layout.** The names transformers' own Orbax → HF converter writes for every published
Gemma 3 checkpoint (``convert_gemma3_weights_orbax_to_hf.py``: ``language_model.model.*``,
``vision_tower.vision_model.*``, ``multi_modal_projector.*``; ``language_model.lm_head.weight`` is
tied to the embedding and not saved). transformers 4.x reads these names natively (4.50/4.51) or
through its checkpoint conversion mapping (4.52+).

**vLLM.** Data copied from vLLM **0.33.0** (wheel ``vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64``):

- ``vllm/model_executor/models/gemma3_mm.py``, ``Gemma3ForConditionalGeneration.hf_to_vllm_mapper``
  (``orig_to_new_prefix``): the only renaming before the weights reach the sub-modules;
- ``vllm/model_executor/models/siglip.py``, ``SiglipVisionTransformer.hf_to_vllm_mapper``
  (``orig_to_new_stacked``), reached through ``SiglipVisionModel.vision_model`` (the vision tower's
  only child: a name under ``vision_tower.`` that does not continue with ``vision_model.`` raises
  "There is no module or parameter named ..."); ``head.`` is dropped because Gemma 3 builds the
  tower with ``use_head=False``;
- ``vllm/model_executor/models/gemma3.py``, ``Gemma3Model.hf_to_vllm_mapper`` (stacked q/k/v and
  gate/up), also used by ``Gemma3ForCausalLM``;
- the parameter names are those of the modules built there (``SiglipAttention.qkv_proj`` and
  ``out_proj`` with bias, ``SiglipMLP.fc1/fc2`` with bias, ``Gemma3Attention.qkv_proj/o_proj``
  without bias, ``Gemma3MLP.gate_up_proj/down_proj`` without bias, ``q_norm``/``k_norm``, the four
  Gemma RMS norms, ``Gemma3MultiModalProjector.mm_input_projection_weight`` and
  ``mm_soft_emb_norm``). ``language_model.lm_head.weight`` is tied to ``embed_tokens`` when
  ``tie_word_embeddings`` (skipped as an alias when a checkpoint carries it).

``test_vllm_mapping_matches_the_wheel`` re-reads these tables from the wheel with ``ast`` when
``LLM_VLLM_WHEEL`` points at one.
"""

from __future__ import annotations

VLLM_VERSION = "0.33.0"

# gemma3_mm.py: Gemma3ForConditionalGeneration.hf_to_vllm_mapper.orig_to_new_prefix
GEMMA3_MM_PREFIX = {
    "model.language_model.": "language_model.model.",
    "model.vision_tower.": "vision_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "lm_head.": "language_model.lm_head.",
}
# siglip.py: SiglipVisionTransformer.hf_to_vllm_mapper.orig_to_new_stacked (name → packed name)
SIGLIP_STACKED = {".q_proj": ".qkv_proj", ".k_proj": ".qkv_proj", ".v_proj": ".qkv_proj"}
SIGLIP_DROPPED_PREFIXES = ("head.",)
# gemma3.py: Gemma3Model.hf_to_vllm_mapper.orig_to_new_stacked (name → packed name)
GEMMA3_STACKED = {
    ".q_proj": ".qkv_proj",
    ".k_proj": ".qkv_proj",
    ".v_proj": ".qkv_proj",
    ".gate_proj": ".gate_up_proj",
    ".up_proj": ".gate_up_proj",
}

_SIGLIP_LAYER = [
    f"{module}.{kind}"
    for module in (
        "self_attn.qkv_proj",
        "self_attn.out_proj",
        "layer_norm1",
        "mlp.fc1",
        "mlp.fc2",
        "layer_norm2",
    )
    for kind in ("weight", "bias")
]
_GEMMA3_LAYER = [
    f"{module}.weight"
    for module in (
        "self_attn.qkv_proj",
        "self_attn.o_proj",
        "self_attn.q_norm",
        "self_attn.k_norm",
        "mlp.gate_up_proj",
        "mlp.down_proj",
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    )
]
DROPPED = "<dropped>"


def vllm_parameters(vision_layers: int, text_layers: int) -> set[str]:
    """Parameter names of vLLM's ``Gemma3ForConditionalGeneration`` (the tied lm_head left out)."""
    vision = "vision_tower.vision_model."
    names = {
        f"{vision}embeddings.patch_embedding.weight",
        f"{vision}embeddings.patch_embedding.bias",
        f"{vision}embeddings.position_embedding.weight",
        f"{vision}post_layernorm.weight",
        f"{vision}post_layernorm.bias",
        "multi_modal_projector.mm_input_projection_weight",
        "multi_modal_projector.mm_soft_emb_norm.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
    }
    names |= {
        f"{vision}encoder.layers.{i}.{p}" for i in range(vision_layers) for p in _SIGLIP_LAYER
    }
    names |= {
        f"language_model.model.layers.{i}.{p}" for i in range(text_layers) for p in _GEMMA3_LAYER
    }
    return names


def _stack(name: str, table: dict[str, str]) -> str:
    for old, new in table.items():  # WeightsMapper: every matching entry, first occurrence
        if old in name:
            name = name.replace(old, new, 1)
    return name


def vllm_parameter_name(key: str) -> str | None:
    """Where vLLM 0.33.0 loads checkpoint tensor ``key``: a parameter name, ``DROPPED``, or
    ``None`` when its loader would raise (no such module or parameter)."""
    for old, new in GEMMA3_MM_PREFIX.items():
        if key.startswith(old):
            key = new + key[len(old) :]
            break
    head, _, rest = key.partition(".")
    if head == "vision_tower":
        child, _, rest = rest.partition(".")
        if child != "vision_model":
            return None
        rest = _stack(rest, SIGLIP_STACKED)
        if rest.startswith(SIGLIP_DROPPED_PREFIXES):
            return DROPPED
        return f"vision_tower.vision_model.{rest}"
    if head == "language_model":
        if rest == "lm_head.weight":
            return "language_model.model.embed_tokens.weight"  # tied alias
        return f"language_model.{_stack(rest, GEMMA3_STACKED)}"
    if head == "multi_modal_projector":
        return key
    return None


def hub_gemma3_names(vision_layers: int, text_layers: int) -> set[str]:
    """The tensor names of a hub Gemma 3 checkpoint (transformers' Orbax converter)."""
    vision = "vision_tower.vision_model."
    names = {
        f"{vision}embeddings.position_embedding.weight",
        f"{vision}embeddings.patch_embedding.weight",
        f"{vision}embeddings.patch_embedding.bias",
        f"{vision}post_layernorm.weight",
        f"{vision}post_layernorm.bias",
        "multi_modal_projector.mm_input_projection_weight",
        "multi_modal_projector.mm_soft_emb_norm.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.norm.weight",
    }
    for i in range(vision_layers):
        for module in (
            "layer_norm1",
            "layer_norm2",
            "mlp.fc1",
            "mlp.fc2",
            "self_attn.k_proj",
            "self_attn.out_proj",
            "self_attn.q_proj",
            "self_attn.v_proj",
        ):
            names |= {f"{vision}encoder.layers.{i}.{module}.{kind}" for kind in ("weight", "bias")}
    for i in range(text_layers):
        for module in (
            "self_attn.o_proj",
            "self_attn.k_norm",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.q_proj",
            "self_attn.q_norm",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "post_attention_layernorm",
            "post_feedforward_layernorm",
            "input_layernorm",
            "pre_feedforward_layernorm",
        ):
            names.add(f"language_model.model.layers.{i}.{module}.weight")
    return names
