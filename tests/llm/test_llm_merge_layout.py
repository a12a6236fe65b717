"""``llm merge`` writes Gemma 3 in the hub layout: every tensor maps onto a vLLM 0.33.0 parameter,
the names are those of a hub checkpoint, and transformers reads the weights back unchanged."""

from __future__ import annotations

import ast
import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from gemma3_layouts import (
    DROPPED,
    GEMMA3_MM_PREFIX,
    GEMMA3_STACKED,
    SIGLIP_STACKED,
    VLLM_VERSION,
    hub_gemma3_names,
    vllm_parameter_name,
    vllm_parameters,
)

from llm.finetune import LoraSettings, lora_target_regex, merge_adapter
from llm.gemma3_checkpoint import CheckpointLayoutError, checkpoint_keys, hub_gemma3_key
from llm.tiny import write_tiny_gemma3

VISION_LAYERS, TEXT_LAYERS = 1, 2  # llm.tiny's Gemma 3


@pytest.fixture(scope="module")
def tiny_and_adapter(tmp_path_factory):
    """The tiny base (saved by transformers 5) and a LoRA adapter on the language model and the
    vision tower with non-zero B matrices, so that merging changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    root = tmp_path_factory.mktemp("merge")
    base = write_tiny_gemma3(root / "base")
    torch.manual_seed(1)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    target = lora_target_regex(LoraSettings(vision_tower=True))
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=target, init_lora_weights=False)
    get_peft_model(model, lora).save_pretrained(root / "adapter")
    return base, root / "adapter"


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def in_memory_merge(base: Path, adapter: Path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    return PeftModel.from_pretrained(model, adapter).merge_and_unload()


def assert_vllm_loads(keys: list[str]) -> None:
    mapped = {key: vllm_parameter_name(key) for key in keys}
    assert not [k for k, name in mapped.items() if name in (None, DROPPED)], VLLM_VERSION
    assert set(mapped.values()) == vllm_parameters(VISION_LAYERS, TEXT_LAYERS)


def test_merged_checkpoint_is_the_hub_layout_that_vllm_loads(tiny_and_adapter, tmp_path):
    from transformers import AutoModelForImageTextToText

    base, adapter = tiny_and_adapter
    # transformers 5 saves the tower without its `vision_model` level: vLLM would refuse it.
    assert "vision_tower.encoder.layers.0.mlp.fc1.weight" in checkpoint_keys(base)
    assert vllm_parameter_name("vision_tower.encoder.layers.0.mlp.fc1.weight") is None

    merged_dir = merge_adapter(adapter, tmp_path / "merged", dtype="float32")
    keys = checkpoint_keys(merged_dir)
    assert set(keys) == hub_gemma3_names(VISION_LAYERS, TEXT_LAYERS)
    assert_vllm_loads(keys)

    expected = in_memory_merge(base, adapter).state_dict()
    reloaded = AutoModelForImageTextToText.from_pretrained(merged_dir, dtype=torch.float32)
    state = reloaded.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    original = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32).state_dict()
    for name in (
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
        "model.language_model.layers.1.self_attn.q_proj.weight",
    ):
        assert not torch.equal(original[name], state[name])  # the adapter is in the weights

    base_config = json.loads((base / "config.json").read_text())
    merged_config = json.loads((merged_dir / "config.json").read_text())
    assert merged_config == base_config  # the base's own config (same dtype here)
    assert json.loads((merged_dir / "merge_manifest.json").read_text())["dtype"] == "float32"


def hub_way_copy(base: Path, folder: Path) -> Path:
    """``base`` rewritten as a published checkpoint stores it (the hub's tensor names)."""
    from safetensors.torch import save_file

    shutil.copytree(base, folder, ignore=shutil.ignore_patterns("*.safetensors"))
    renamed = {hub_gemma3_key(k): v.contiguous() for k, v in tensors(base).items()}
    assert set(renamed) == hub_gemma3_names(VISION_LAYERS, TEXT_LAYERS)
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def test_a_hub_way_base_is_read_and_merged_the_same(tiny_and_adapter, tmp_path):
    from transformers import AutoModelForImageTextToText

    base, adapter = tiny_and_adapter
    hub_base = hub_way_copy(base, tmp_path / "hub-base")
    loaded = AutoModelForImageTextToText.from_pretrained(hub_base, dtype=torch.float32)
    original = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in original.state_dict().items())

    from_hub = merge_adapter(
        adapter, tmp_path / "from-hub", base_model=str(hub_base), dtype="float32"
    )
    from_v5 = merge_adapter(adapter, tmp_path / "from-v5", dtype="float32")
    assert_vllm_loads(checkpoint_keys(from_hub))
    hub_tensors, v5_tensors = tensors(from_hub), tensors(from_v5)
    assert hub_tensors.keys() == v5_tensors.keys()
    assert all(torch.equal(hub_tensors[k], v5_tensors[k]) for k in hub_tensors)


def test_layout_names_and_errors():
    # transformers >= 4.52 names (what vLLM's own prefix mapper expects) and 5.x names agree.
    for name in (
        "model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight",
        "model.vision_tower.encoder.layers.0.mlp.fc1.weight",
        "vision_tower.encoder.layers.0.mlp.fc1.weight",
    ):
        assert hub_gemma3_key(name) == "vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"
    assert hub_gemma3_key("model.language_model.norm.weight") == "language_model.model.norm.weight"
    assert hub_gemma3_key("lm_head.weight") == "language_model.lm_head.weight"
    with pytest.raises(CheckpointLayoutError, match="encoder.weight: not a tensor of a Gemma 3"):
        hub_gemma3_key("encoder.weight")


def _class_mapper(source: str, class_name: str, keyword: str) -> dict:
    tree = ast.parse(source)
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    for node in cls.body:
        if isinstance(node, ast.Assign) and node.targets[0].id == "hf_to_vllm_mapper":
            call = node.value
            return next(ast.literal_eval(k.value) for k in call.keywords if k.arg == keyword)
    raise AssertionError(f"{class_name}.hf_to_vllm_mapper not found")


@pytest.mark.skipif(
    not os.environ.get("LLM_VLLM_WHEEL"), reason="set LLM_VLLM_WHEEL to a vLLM wheel to compare"
)
def test_vllm_mapping_matches_the_wheel():
    wheel = Path(os.environ["LLM_VLLM_WHEEL"])
    assert f"vllm-{VLLM_VERSION}-" in wheel.name
    models = "vllm/model_executor/models/"
    with zipfile.ZipFile(wheel) as archive:
        read = lambda name: archive.read(models + name).decode()  # noqa: E731
        prefix = _class_mapper(
            read("gemma3_mm.py"), "Gemma3ForConditionalGeneration", "orig_to_new_prefix"
        )
        text = _class_mapper(read("gemma3.py"), "Gemma3Model", "orig_to_new_stacked")
        vision = _class_mapper(read("siglip.py"), "SiglipVisionTransformer", "orig_to_new_stacked")
    assert prefix == GEMMA3_MM_PREFIX
    assert {k: v[0] for k, v in text.items()} == GEMMA3_STACKED
    assert {k: v[0] for k, v in vision.items()} == SIGLIP_STACKED
