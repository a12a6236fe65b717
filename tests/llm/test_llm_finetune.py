"""SFT set building and Gemma 3 QLoRA (4-bit NF4 on CPU) on a tiny random-init checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from gemma3_layouts import vllm_parameter_name, vllm_parameters
from llm_fixtures import make_config

from llm.cli import main
from llm.enhance import RunOptions, enhance
from llm.finetune import (
    CompletionOnlyCollator,
    QuantizationSettings,
    SftData,
    load_model,
    merge_adapter,
)
from llm.gemma3_checkpoint import checkpoint_keys
from llm.loopback_server import LoopbackServer, Reply, prompt_fields, well_formed_reply
from llm.prompt import build_prompt
from llm.render import render_enhance_target
from llm.targets import discover_annotations, targets_of_patch
from llm.tiny import write_tiny_gemma3


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    return write_tiny_gemma3(tmp_path_factory.mktemp("models") / "tiny-gemma3")


@pytest.fixture
def sft_set(dataset):
    """A teacher run where the water regions fail validation, and the SFT set built from it."""

    def respond(body, seen):
        if prompt_fields(body)[0] == "water":
            return Reply("{}")
        return well_formed_reply(body, seen)

    with LoopbackServer(respond) as server:
        config = make_config(server.base_url, queue={"max_resamples": 0})
        files = discover_annotations(dataset)
        enhance(config, files, dataset / "work", RunOptions(progress=False))
    config_path = dataset / "config.json"
    config_path.write_text(config.model_dump_json())
    command = ["build-sft", "--config", str(config_path), "--annotations", str(dataset)]
    command += ["--work-dir", str(dataset / "work"), "--sft-out", str(dataset / "sft")]
    assert main([*command, "--eval-fraction", "0.34", "--seed", "0"]) == 0
    manifest = json.loads((dataset / "sft" / "manifest.json").read_text())
    return config, files, dataset / "sft", manifest


def test_sft_set_holds_only_valid_answers_split_by_patch(sft_set):
    config, files, folder, manifest = sft_set
    assert manifest["counts"] == {"train": 6, "eval": 3}  # 3 failed water targets left out
    assert manifest["patches"] == {"train": 2, "eval": 1}
    train = [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()]
    evaluation = [json.loads(line) for line in (folder / "eval.jsonl").read_text().splitlines()]
    assert not {r["patch"] for r in train} & {r["patch"] for r in evaluation}
    row = train[0]
    target = next(t for f in files for t, _ in targets_of_patch(f.read(), f) if t.uid == row["id"])
    images = render_enhance_target(target, config.render)
    system, user, assistant = row["messages"]
    assert (folder / user["content"][0]["image"]).read_bytes() == images.first_bytes
    assert (folder / user["content"][1]["image"]).read_bytes() == images.second_bytes
    prompt = build_prompt(target, images.mode, config)
    assert (
        system["content"][0]["text"] == prompt.system and user["content"][2]["text"] == prompt.user
    )
    answer = json.loads(assistant["content"][0]["text"])
    assert len(answer["enhanced_expressions"]) == len(target.originals)
    assert row["teacher"] == "teacher-loopback" and row["prompt_version"] == prompt.version


def test_labels_cover_only_the_assistant_turn(sft_set, tiny_gemma3):
    from transformers import AutoProcessor

    _, _, folder, _ = sft_set
    processor = AutoProcessor.from_pretrained(tiny_gemma3)
    collator = CompletionOnlyCollator(processor)
    data = SftData.load(folder, "train")
    batch = collator([data[0], data[3]])
    tokenizer = processor.tokenizer
    image_token = tokenizer.convert_tokens_to_ids("<image_soft_token>")
    for row, conversation in enumerate((data[0], data[3])):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        supervised = (labels != -100).nonzero().flatten()
        start, end = int(supervised[0]), int(supervised[-1]) + 1
        assert len(supervised) == end - start  # one contiguous span
        assert (ids[:start] == image_token).sum() == 8  # both images lie in the masked prompt
        answer = conversation[-1]["content"][0]["text"]
        assert tokenizer.decode(ids[start:end]) == answer + "<end_of_turn>\n"
        prompt = tokenizer.decode(ids[:start])
        assert prompt.endswith("<start_of_turn>model\n") and "Original expressions" in prompt
        assert (labels[end:] == -100).all() and (batch["attention_mask"][row, end:] == 0).all()


@pytest.mark.slow
def test_shipped_tiny_config_trains_nf4_reloads_and_merges(sft_set, tmp_path, capsys):
    """`llm finetune --config tiny --merge-to`: the CPU smoke run of the whole path."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    _, _, folder, _ = sft_set
    out, merged_dir = tmp_path / "run", tmp_path / "merged"
    command = ["finetune", "--config", "tiny", "--data", str(folder), "--out", str(out)]
    assert main([*command, "--merge-to", str(merged_dir)]) == 0
    assert f"merged checkpoint: {merged_dir}" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    tiny_base = out / "tiny-base"  # written by the run: base_model "tiny"
    assert manifest["config"]["base_model"] == "tiny"
    assert manifest["base_model"] == str(tiny_base)
    losses = manifest["train_losses"]
    assert len(losses) == 5 and losses[-1] < losses[0]
    assert manifest["linear_4bit_modules"] > 0  # NF4 really on
    assert manifest["eval_loss"] > 0 and manifest["data"]["eval_examples"] == 3
    assert manifest["trainable_parameters"] < manifest["total_parameters"] / 2
    sample = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    assert sample["valid"] is False and sample["reason"]  # 5 steps teach no JSON

    processor = AutoProcessor.from_pretrained(out / "adapter")
    batch = CompletionOnlyCollator(processor)([SftData.load(folder, "train")[i] for i in (0, 1)])
    quantized = load_model(str(tiny_base), QuantizationSettings())
    reloaded = PeftModel.from_pretrained(quantized, out / "adapter").eval()
    with torch.no_grad():
        tuned = reloaded(**batch).loss
        with reloaded.disable_adapter():
            base = reloaded(**batch).loss
    assert tuned < base

    # The merged folder (bf16, the default) is the hub layout vLLM loads.
    keys = checkpoint_keys(merged_dir)
    assert {vllm_parameter_name(key) for key in keys} == vllm_parameters(1, 2)
    merged_fp32 = merge_adapter(out / "adapter", tmp_path / "merged32", dtype="float32")
    merged = AutoModelForImageTextToText.from_pretrained(merged_fp32, dtype=torch.float32).eval()
    unmerged = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_base, dtype=torch.float32),
        out / "adapter",
    ).eval()
    with torch.no_grad():
        expected = unmerged(**batch).logits
        assert torch.allclose(merged(**batch).logits, expected, atol=1e-4)
    assert json.loads((merged_fp32 / "merge_manifest.json").read_text())["training"]["train_losses"]
