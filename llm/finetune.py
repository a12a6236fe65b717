"""``llm finetune`` and ``llm merge``: Gemma 3 QLoRA distillation on the SFT set, and export.

Training (``transformers`` Trainer + ``peft`` + ``bitsandbytes``):

- the base model (``google/gemma-3-12b-it`` / ``-4b-it`` or a local folder) is loaded in 4-bit NF4
  with double quantization and bf16 compute, prepared with ``prepare_model_for_kbit_training`` and
  wrapped with LoRA on the decoder projections (``q/k/v/o/gate/up/down_proj`` of the language model;
  the SigLIP vision tower only when ``lora.vision_tower`` is set). No ``modules_to_save``: the task
  needs no new tokens, and full copies of the 262K-row embedding would dwarf the adapter;
- each example is rendered with the model's own chat template from the same
  :func:`llm.prompt.hf_messages` conversation as inference, and the loss covers only the assistant
  turn: every label up to the end of the generation prompt is -100 (checked to be a token prefix of
  the full conversation), as are pad tokens;
- at the end: eval loss on the eval split, greedy sample generations validated with the same rules
  as teacher answers (``samples.jsonl``), the adapter + processor (``adapter/``) and
  ``manifest.json`` with every setting, the data hashes, library versions and the losses.

``llm merge`` folds the adapter into the unquantized base weights (bf16) and saves a standard
checkpoint folder in the hub layout (:mod:`llm.gemma3_checkpoint`) that vLLM serves directly
(``vllm serve <folder>``) and transformers 4.x and 5.x load.

``base_model: tiny`` (``llm/configs/tiny.yaml``) trains on a random-init tiny Gemma 3 written by
:mod:`llm.tiny` into ``<out>/tiny-base``: a CPU smoke run of the whole path, no download.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from aerialformats.atomic import atomic_write_text
from llm.config import ConfigSection, ValidationConfig, load_yaml, parse_config
from llm.schema import InvalidAnswer, validate_answer
from llm.targets import OriginalExpression

DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class QuantizationSettings(ConfigSection):
    load_in_4bit: bool = True
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class LoraSettings(ConfigSection):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: tuple[str, ...] = DECODER_PROJECTIONS
    # Also adapt the SigLIP vision tower's attention and MLP (as the Aerial-D authors did).
    vision_tower: bool = False


class TrainSettings(ConfigSection):
    epochs: float = Field(1.0, gt=0)
    max_steps: int = -1
    batch_size: int = Field(1, ge=1)
    grad_accum: int = Field(8, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    lr_scheduler: str = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = True
    bf16: bool = True
    max_length: int = Field(4096, ge=16)
    seed: int = 42
    logging_steps: int = Field(1, ge=1)
    # 0: only the final adapter; N: a resumable checkpoint every N optimizer steps.
    save_steps: int = Field(0, ge=0)


class EvalSettings(ConfigSection):
    batch_size: int = Field(1, ge=1)
    sample_generations: int = Field(4, ge=0)
    max_new_tokens: int = Field(1024, ge=1)


# ``base_model`` value that stands for the tiny random-init Gemma 3 of :mod:`llm.tiny`.
TINY_BASE_MODEL = "tiny"


class FinetuneConfig(ConfigSection):
    # A hub id, a local checkpoint folder, or "tiny" (CPU smoke runs).
    base_model: str
    attn_implementation: str = "eager"
    quantization: QuantizationSettings = QuantizationSettings()
    lora: LoraSettings = LoraSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()


def load_finetune_config(path: str | os.PathLike) -> FinetuneConfig:
    return parse_config(FinetuneConfig, load_yaml(path), str(path))


# ---------------------------------------------------------------------------------------- data


@dataclass
class SftData:
    """One split of an SFT folder written by :func:`llm.sft.build_sft_set`; items are opened
    lazily (images as PIL) so memory does not grow with the set."""

    folder: Path
    rows: list[dict[str, Any]]

    @classmethod
    def load(cls, folder: str | os.PathLike, split: str) -> SftData:
        folder = Path(folder)
        path = folder / f"{split}.jsonl"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SFT split not found; run `llm build-sft` first")
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{number}: not JSON ({exc.msg})") from None
        return cls(folder=folder, rows=rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> list[dict]:
        """The conversation of row ``index`` with its image paths opened as PIL images."""
        from PIL import Image

        messages = json.loads(json.dumps(self.rows[index]["messages"]))
        for message in messages:
            for part in message["content"]:
                if part["type"] == "image" and isinstance(part["image"], str):
                    with Image.open(self.folder / part["image"]) as image:
                        part["image"] = image.convert("RGB")
        return messages


def _images(messages: list[dict]) -> list:
    return [p["image"] for m in messages for p in m["content"] if p["type"] == "image"]


class CompletionOnlyCollator:
    """Batches conversations; labels are -100 everywhere except the assistant turn.

    The prompt (system + user + generation prompt) is rendered with ``add_generation_prompt=True``
    and must be a text and token prefix of the full conversation, which holds for Gemma 3's
    template; anything else is an error rather than silently training on the prompt.
    """

    def __init__(self, processor, max_length: int | None = None):
        self.processor = processor
        self.max_length = max_length
        processor.tokenizer.padding_side = "right"

    def _encode(self, text: str, images: list):
        return self.processor(
            text=[text], images=[images], add_special_tokens=False, return_tensors="pt"
        )

    def lengths(self, messages: list[dict]) -> tuple[int, int]:
        """``(prompt tokens, total tokens)`` of one conversation."""
        prompt, full = self._texts(messages)
        images = _images(messages)
        prompt_ids = self._encode(prompt, images)["input_ids"][0]
        full_ids = self._encode(full, images)["input_ids"][0]
        if (
            len(prompt_ids) >= len(full_ids)
            or not (full_ids[: len(prompt_ids)] == prompt_ids).all()
        ):
            raise ValueError(
                "chat template: the prompt tokens are not a prefix of the conversation"
            )
        return len(prompt_ids), len(full_ids)

    def _texts(self, messages: list[dict]) -> tuple[str, str]:
        if messages[-1]["role"] != "assistant":
            raise ValueError("an SFT conversation must end with the assistant turn")
        template = self.processor.apply_chat_template
        prompt = template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = template(messages, tokenize=False)
        if not full.startswith(prompt):
            raise ValueError("chat template: the generation prompt is not a prefix of the turn")
        return prompt, full

    def __call__(self, conversations: list[list[dict]]) -> dict:
        texts, images, prompt_lengths = [], [], []
        for messages in conversations:
            prompt_length, _ = self.lengths(messages)
            texts.append(self._texts(messages)[1])
            images.append(_images(messages))
            prompt_lengths.append(prompt_length)
        batch = self.processor(
            text=texts, images=images, padding=True, add_special_tokens=False, return_tensors="pt"
        )
        labels = batch["input_ids"].clone()
        for row, prompt_length in enumerate(prompt_lengths):
            labels[row, :prompt_length] = -100
        labels[batch["attention_mask"] == 0] = -100
        batch["labels"] = labels
        return dict(batch)


# ---------------------------------------------------------------------------------------- model


def _dtype(name: str):
    import torch

    return getattr(torch, name)


def lora_target_regex(lora: LoraSettings) -> str:
    decoder = "|".join(lora.target_modules)
    pattern = rf".*language_model.*\.({decoder})"
    if lora.vision_tower:
        pattern += rf"|.*vision_tower.*\.({'|'.join(VISION_PROJECTIONS)})"
    return f"^(?:{pattern})$"


def load_model(
    path: str, quantization: QuantizationSettings | None, attn_implementation: str = "eager"
):
    """``AutoModelForImageTextToText`` from ``path``, 4-bit when ``quantization.load_in_4bit``."""
    import torch
    from transformers import AutoModelForImageTextToText, BitsAndBytesConfig

    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation}
    if quantization is not None and quantization.load_in_4bit:
        compute = _dtype(quantization.compute_dtype)
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantization.quant_type,
            bnb_4bit_use_double_quant=quantization.double_quant,
            bnb_4bit_compute_dtype=compute,
            bnb_4bit_quant_storage=compute,
        )
        kwargs["dtype"] = compute
    else:
        kwargs["dtype"] = torch.bfloat16
    if torch.cuda.is_available():
        kwargs["device_map"] = {"": torch.cuda.current_device()}
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""


def _git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def _versions() -> dict[str, str]:
    import bitsandbytes
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
    }


# ---------------------------------------------------------------------------------------- run


def generate_answer(model, processor, messages: list[dict], max_new_tokens: int) -> str:
    """Greedy answer to a conversation without its assistant turn (new tokens only)."""
    import torch

    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = processor(
        text=[prompt], images=[_images(messages)], add_special_tokens=False, return_tensors="pt"
    ).to(model.device)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :]
    return processor.decode(new_tokens, skip_special_tokens=True)


def _originals_of(messages: list[dict]) -> list[OriginalExpression]:
    answer = json.loads(messages[-1]["content"][0]["text"])
    return [
        OriginalExpression(id=str(item["index"]), text=item["original_expression"])
        for item in answer["enhanced_expressions"]
    ]


@dataclass
class _Subset:
    data: SftData
    indices: list[int]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> list[dict]:
        return self.data[self.indices[index]]


def _fit(data: SftData, collator: CompletionOnlyCollator, max_length: int) -> tuple[_Subset, int]:
    """The examples whose full conversation fits in ``max_length`` tokens, and how many did not."""
    kept = [i for i in range(len(data)) if collator.lengths(data[i])[1] <= max_length]
    return _Subset(data, kept), len(data) - len(kept)


def resolve_base_model(base_model: str, out_dir: Path) -> str:
    """``base_model``, or for ``tiny`` a tiny Gemma 3 folder written once under ``out_dir``."""
    if base_model != TINY_BASE_MODEL:
        return base_model
    from llm.tiny import write_tiny_gemma3

    folder = out_dir / "tiny-base"
    if not (folder / "config.json").is_file():
        write_tiny_gemma3(folder)
    return str(folder)


def run_finetune(
    config: FinetuneConfig, data_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> dict[str, Any]:
    """Train, evaluate, sample and save; returns the manifest (also ``<out>/manifest.json``)."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoProcessor, Trainer, TrainingArguments

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    data_manifest_path = data_dir / "manifest.json"
    if not data_manifest_path.is_file():
        raise FileNotFoundError(f"{data_manifest_path}: not an SFT folder (run `llm build-sft`)")
    data_manifest = json.loads(data_manifest_path.read_text(encoding="utf-8"))
    validation = ValidationConfig.model_validate(data_manifest["validation"])
    train = config.train
    base_model = resolve_base_model(config.base_model, out_dir)

    processor = AutoProcessor.from_pretrained(base_model)
    collator = CompletionOnlyCollator(processor, train.max_length)
    train_rows, dropped_train = _fit(SftData.load(data_dir, "train"), collator, train.max_length)
    eval_rows, dropped_eval = _fit(SftData.load(data_dir, "eval"), collator, train.max_length)
    if not len(train_rows):
        raise ValueError(f"{data_dir}: no training example fits in max_length={train.max_length}")

    model = load_model(base_model, config.quantization, config.attn_implementation)
    if config.quantization.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=train.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    lora = config.lora
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora_target_regex(lora),
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    trainable, total = model.get_nb_trainable_parameters()
    quantized = sum(type(m).__name__ == "Linear4bit" for m in model.modules())
    use_cpu = not torch.cuda.is_available()
    checkpoints = out_dir / "checkpoints"
    args = TrainingArguments(
        output_dir=str(checkpoints),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=config.eval.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=train.optim,
        gradient_checkpointing=train.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=train.bf16,
        use_cpu=use_cpu,
        logging_steps=train.logging_steps,
        save_strategy="steps" if train.save_steps else "no",
        save_steps=train.save_steps or 500,
        eval_strategy="no",
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=train.seed,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        eval_dataset=eval_rows if len(eval_rows) else None,
        data_collator=collator,
    )
    resume = train.save_steps > 0 and any(checkpoints.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    eval_loss = trainer.evaluate()["eval_loss"] if len(eval_rows) else None

    adapter_dir = out_dir / "adapter"
    model.save_pretrained(adapter_dir)
    processor.save_pretrained(adapter_dir)

    model.eval()
    samples = []
    shown = eval_rows if len(eval_rows) else train_rows
    for index in range(min(config.eval.sample_generations, len(shown))):
        messages = shown[index]
        text = generate_answer(model, processor, messages[:-1], config.eval.max_new_tokens)
        try:
            validate_answer(text, _originals_of(messages), validation)
            sample = {"valid": True, "reason": None}
        except InvalidAnswer as exc:
            sample = {"valid": False, "reason": exc.reason}
        samples.append({"answer": text, "reference": messages[-1]["content"][0]["text"], **sample})
    atomic_write_text(
        out_dir / "samples.jsonl",
        "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples),
    )
    manifest = {
        "config": config.model_dump(mode="json"),
        "data": {
            "folder": str(data_dir),
            "prompt_version": data_manifest["prompt_version"],
            "train_sha256": _file_sha256(data_dir / "train.jsonl"),
            "eval_sha256": _file_sha256(data_dir / "eval.jsonl"),
            "train_examples": len(train_rows),
            "eval_examples": len(eval_rows),
            "dropped_over_max_length": {"train": dropped_train, "eval": dropped_eval},
        },
        "trainable_parameters": trainable,
        "linear_4bit_modules": quantized,
        "total_parameters": total,
        "train_losses": losses,
        "eval_loss": eval_loss,
        "samples_valid": sum(s["valid"] for s in samples),
        "samples": len(samples),
        "base_model": base_model,
        "git_sha": _git_sha(),
        "versions": _versions(),
        "adapter": str(adapter_dir),
    }
    atomic_write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2))
    return manifest


def merge_adapter(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    base_model: str | None = None,
    dtype: str = "bfloat16",
) -> Path:
    """Merge a LoRA adapter into its unquantized base and save a hub-layout checkpoint (for vLLM
    and transformers 4.x/5.x; see :mod:`llm.gemma3_checkpoint`)."""
    from peft import PeftConfig, PeftModel
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from llm.gemma3_checkpoint import save_hub_checkpoint

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter)")
    base = base_model or PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=_dtype(dtype))
    merged = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    save_hub_checkpoint(merged, out_dir, base, dtype)
    processor_source = adapter_dir if (adapter_dir / "processor_config.json").is_file() else base
    AutoProcessor.from_pretrained(processor_source).save_pretrained(out_dir)
    manifest = {"base_model": base, "adapter": str(adapter_dir), "dtype": dtype}
    training = adapter_dir.parent / "manifest.json"
    if training.is_file():
        manifest["training"] = json.loads(training.read_text(encoding="utf-8"))
    atomic_write_text(out_dir / "merge_manifest.json", json.dumps(manifest, indent=2))
    return out_dir
