"""A tiny random-init Gemma 3 (vision + text) checkpoint folder, built offline.

Used by the tests (fine-tuning with NF4 on CPU, ``transformers serve``) and for smoke runs of
``llm finetune`` without downloading anything. The folder has the layout of a real Hugging Face
checkpoint (config, safetensors, processor, tokenizer, chat template), so it goes through the same
``from_pretrained`` code as ``google/gemma-3-12b-it``. The tokenizer is a byte-level BPE trained
with ``tokenizers`` on the prompt texts; the chat template reproduces Gemma 3's turn layout
(``<start_of_turn>user ... <end_of_turn>``, the system text at the start of the first user turn,
``<start_of_image>`` per image).

Every linear layer's input width is a multiple of 64: bitsandbytes' CPU 4-bit kernels quantize in
blocks of 64 along it.
"""

from __future__ import annotations

import os
from pathlib import Path

from llm.config import EnhanceConfig
from llm.prompt import system_texts

SPECIAL_TOKENS = [
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set system_text = messages[0]['content'] -%}"
    "{%- else -%}"
    "{%- set system_text = messages[0]['content'] | map(attribute='text') | join('') -%}"
    "{%- endif -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set system_text = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "<start_of_turn>{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{%- if loop.first and system_text %}{{ '\n' + system_text + '\n\n' }}{% else %}{{ '\n' }}"
    "{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}<start_of_image>"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "<end_of_turn>{{ '\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<start_of_turn>model{{ '\n' }}{%- endif -%}"
)

_SAMPLE_ANSWER = (
    '{"enhanced_expressions": [{"index": 1, "original_expression": "the small vehicle in the top '
    'left", "variation": "the little car at the upper left"}], "unique_description": "a grey road '
    'runs past green trees and a white building", "unique_expressions": ["the small car parked '
    'next to the grey road", "the small car close to the green trees on the left"]}'
)


def _corpus() -> list[str]:
    config = EnhanceConfig.model_validate({"backend": {"model": "tiny"}})
    texts = list(system_texts(config).values())
    texts += [_SAMPLE_ANSWER, "Target: a single object, category small vehicle.\n1. the car"]
    return texts * 4


def write_tiny_gemma3(path: str | os.PathLike, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Write the checkpoint folder and return its path."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Gemma3Config,
        Gemma3ForConditionalGeneration,
        Gemma3ImageProcessor,
        Gemma3Processor,
        PreTrainedTokenizerFast,
    )

    path = Path(path)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    # No word splitting: merges may span spaces, so the long fixed prompt becomes few tokens.
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )
    image_tokens = 4  # 32 px / 8 px patches = 4x4, pooled to 2x2
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        image_seq_length=image_tokens,
    )
    vocab = bpe.get_vocab()
    config = Gemma3Config(
        text_config={
            "vocab_size": bpe.get_vocab_size(),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 32,
            "query_pre_attn_scalar": 32,
            "sliding_window": 512,
            "max_position_embeddings": 4096,
        },
        vision_config={
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
            "vision_use_head": False,  # as in every Gemma 3 (the LM reads the patch tokens)
        },
        mm_tokens_per_image=image_tokens,
        boi_token_index=vocab["<start_of_image>"],
        eoi_token_index=vocab["<end_of_image>"],
        image_token_index=vocab["<image_soft_token>"],
        pad_token_id=vocab["<pad>"],
        bos_token_id=vocab["<bos>"],
        eos_token_id=[vocab["<eos>"], vocab["<end_of_turn>"]],
    )
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(config)
    model.generation_config.eos_token_id = [vocab["<eos>"], vocab["<end_of_turn>"]]
    model.generation_config.pad_token_id = vocab["<pad>"]
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
