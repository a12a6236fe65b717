"""The versioned prompt builder shared by teacher requests, the SFT set and student inference.

One layout everywhere: a system turn with the instructions and the answer format, then a user turn
with the two images followed by the category and the numbered original expressions. The prompt
version is ``v<REVISION>-<digest>``; the digest covers the instruction text (with its numeric
parameters) and the rendering settings, so any change that alters what a model sees changes the
version recorded in the ledger, the cache key and the provenance of every written expression.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from llm.config import EnhanceConfig
from llm.render import RenderedImages
from llm.targets import EnhanceTarget

REVISION = 1

_ROLE = (
    "You write referring expressions for aerial and satellite images. A referring expression is a "
    "short phrase that singles out one target (an object, a group of objects or a land-cover "
    "region) so that a reader can find it in the image."
)

_IMAGES = {
    "outline": (
        "You get two images of the same scene. The first shows the whole scene with thin red "
        "rectangles drawn around the target (one rectangle per object of a group). The second is a "
        "close-up of the target without any drawing, for detail."
    ),
    "overlay": (
        "You get two images of the same scene. In the first the target region is tinted red; the "
        "tint only marks the region and is not its colour. The second is the same scene without "
        "the tint, in its true colours."
    ),
}

_RULES = (
    "Rules for every expression you write:\n"
    "- describe only what is visible; add a visual detail only when you are sure of it\n"
    "- keep the scope of the original: a single object stays single, and expressions about all "
    "objects of a kind or a group of objects stay collective and plural\n"
    "- keep every position and relation the original states (such as top left, topmost, "
    "to the right of the road)\n"
    "- never mention the red rectangles, the red tint, the two images, the close-up or any "
    "marking; describe the scene as if it were unmarked\n"
    "- lowercase letters, digits and spaces only, no punctuation; between {min_words} and "
    "{max_words} words"
)

_TASKS = (
    "Tasks:\n"
    "1. For each numbered original expression write exactly one rewrite in everyday words with "
    "common synonyms that keeps its meaning, scope and spatial information.\n"
    "2. Write a short analysis of the target's surroundings: nearby objects, colours, shapes, "
    "roads, buildings, terrain and, for groups, their arrangement; note what makes the target "
    "unmistakable.\n"
    "3. Using the analysis, write exactly {num_unique} new expressions that each identify the "
    "target on their own: start from an original expression or its rewrite, keep its spatial "
    "information and add relations to visible surroundings."
)

_FORMAT = (
    "Answer with one JSON object and nothing else, with these keys in this order:\n"
    '"enhanced_expressions": one item per original expression, in order, each '
    '{{"index": <number of the original>, "original_expression": <the original copied exactly>, '
    '"variation": <its rewrite>}}\n'
    '"unique_description": the analysis of task 2\n'
    '"unique_expressions": a list of exactly {num_unique} new expressions'
)

_KIND_WORDS = {
    "instance": "a single object",
    "group": "a group of objects",
    "semantic": "a land-cover region",
}

_USER = (
    "Target: {kind_words}, category {category}.\n"
    "Original expressions:\n{numbered}\n"
    "Use both images and answer in the JSON format."
)


@dataclass(frozen=True)
class Prompt:
    """The text of one request (images attached by :func:`openai_messages`/:func:`hf_messages`)."""

    system: str
    user: str
    version: str


def _system_text(mode: str, config: EnhanceConfig) -> str:
    validation = config.validation
    rules = _RULES.format(min_words=validation.min_words, max_words=validation.max_words)
    tasks = _TASKS.format(num_unique=validation.num_unique)
    answer = _FORMAT.format(num_unique=validation.num_unique)
    return "\n\n".join([_ROLE, _IMAGES[mode], rules, tasks, answer])


def system_texts(config: EnhanceConfig) -> dict[str, str]:
    """The system text of each rendering mode (``outline``, ``overlay``)."""
    return {mode: _system_text(mode, config) for mode in sorted(_IMAGES)}


def prompt_version(config: EnhanceConfig) -> str:
    """``v<REVISION>-<8 hex>`` over the instruction texts and the render settings."""
    payload = {
        "system": system_texts(config),
        "user": _USER,
        "render": config.render.model_dump(mode="json"),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:8]
    return f"v{REVISION}-{digest}"


def build_prompt(target: EnhanceTarget, mode: str, config: EnhanceConfig) -> Prompt:
    """The prompt of ``target``; ``mode`` is the rendering mode (``outline`` or ``overlay``)."""
    numbered = "\n".join(f"{i}. {o.text}" for i, o in enumerate(target.originals, start=1))
    user = _USER.format(
        kind_words=_KIND_WORDS[target.kind], category=target.category_text, numbered=numbered
    )
    return Prompt(_system_text(mode, config), user, prompt_version(config))


def _data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def openai_messages(prompt: Prompt, images: RenderedImages) -> list[dict[str, Any]]:
    """Chat-completions messages: system text, then user [image 1, image 2, text]."""
    return [
        {"role": "system", "content": prompt.system},
        {
            "role": "user",
            "content": [
                {
                    "type": "image_url",
                    "image_url": {"url": _data_url(images.first_bytes, images.mime)},
                },
                {
                    "type": "image_url",
                    "image_url": {"url": _data_url(images.second_bytes, images.mime)},
                },
                {"type": "text", "text": prompt.user},
            ],
        },
    ]


def hf_messages(prompt: Prompt, first: Any, second: Any, answer: str | None = None) -> list[dict]:
    """The same conversation in the Hugging Face processor chat format.

    ``first``/``second`` are PIL images or image paths (SFT JSONL); ``answer`` adds the assistant
    turn.
    """
    messages: list[dict] = [
        {"role": "system", "content": [{"type": "text", "text": prompt.system}]},
        {
            "role": "user",
            "content": [
                {"type": "image", "image": first},
                {"type": "image", "image": second},
                {"type": "text", "text": prompt.user},
            ],
        },
    ]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages
