"""The enhancement answer: pydantic schema, JSON schema for structured outputs, strict validation.

Answer shape (the key names of the published Aerial-D teacher set, plus ``index``)::

    {"enhanced_expressions": [{"index": 1, "original_expression": str, "variation": str}, ...],
     "unique_description": str,          # short analysis, written before the new expressions
     "unique_expressions": [str, str]}

:func:`validate_answer` accepts an answer only when it is complete and usable: one variation per
original, each echoing its original by index and text; exactly ``num_unique`` new expressions;
every expression lowercase, without punctuation or forbidden words (box, mask, outline, ...), within
the word bounds, and not a copy of an original or of another output. Anything else raises
:class:`InvalidAnswer` with a short reason code (used for resampling and the failure report).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from llm.config import ValidationConfig
from llm.targets import OriginalExpression

SCHEMA_NAME = "aeriald_enhancement"


class EnhancedExpression(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int
    original_expression: str
    variation: str


class EnhancementAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enhanced_expressions: list[EnhancedExpression]
    unique_description: str
    unique_expressions: list[str]


def answer_json_schema(num_originals: int, config: ValidationConfig, array_bounds: bool) -> dict:
    """Strict JSON schema of an answer for ``num_originals`` originals (all keys required)."""
    variation = {
        "type": "object",
        "properties": {
            "index": {"type": "integer", "description": "number of the original expression"},
            "original_expression": {
                "type": "string",
                "description": "the original expression, copied exactly",
            },
            "variation": {"type": "string", "description": "the rewrite of the original"},
        },
        "required": ["index", "original_expression", "variation"],
        "additionalProperties": False,
    }
    enhanced: dict[str, Any] = {"type": "array", "items": variation}
    unique: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
    if array_bounds:
        enhanced.update(minItems=num_originals, maxItems=num_originals)
        unique.update(minItems=config.num_unique, maxItems=config.num_unique)
    return {
        "type": "object",
        "properties": {
            "enhanced_expressions": enhanced,
            "unique_description": {
                "type": "string",
                "description": "short analysis of the surroundings; what makes the target unique",
            },
            "unique_expressions": unique,
        },
        "required": ["enhanced_expressions", "unique_description", "unique_expressions"],
        "additionalProperties": False,
    }


def response_format(num_originals: int, config: ValidationConfig, array_bounds: bool) -> dict:
    """The chat-completions ``response_format`` for strict structured outputs."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": SCHEMA_NAME,
            "strict": True,
            "schema": answer_json_schema(num_originals, config, array_bounds),
        },
    }


class InvalidAnswer(ValueError):
    """An answer failed validation; ``reason`` is a short code, ``detail`` says where."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Variation:
    original: OriginalExpression
    text: str


@dataclass(frozen=True)
class ValidatedAnswer:
    """A validated answer, variations in the order of the originals."""

    variations: tuple[Variation, ...]
    analysis: str
    uniques: tuple[str, ...]

    def to_dict(self) -> dict:
        """The canonical answer JSON (the SFT target and the ledger record)."""
        return {
            "enhanced_expressions": [
                {
                    "index": index,
                    "original_expression": variation.original.text,
                    "variation": variation.text,
                }
                for index, variation in enumerate(self.variations, start=1)
            ],
            "unique_description": self.analysis,
            "unique_expressions": list(self.uniques),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)

    def source_ids(self) -> list[str]:
        return [variation.original.id for variation in self.variations]


_ALLOWED_CHARS = re.compile(r"^[^\W_]+(?:[ '\-][^\W_]+)*$")
_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.S)


def normalize_expression(text: str) -> str:
    """Collapse whitespace and drop one trailing full stop; nothing else is rewritten."""
    text = " ".join(text.split())
    return text[:-1].rstrip() if text.endswith(".") else text


def _comparable(text: str) -> str:
    return " ".join(text.lower().split())


def parse_answer_text(text: str | None) -> Any:
    """JSON of an answer: the whole message, or the only fenced ```json block in it."""
    if text is None or not text.strip():
        raise InvalidAnswer("empty_answer", "the answer has no content")
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError as exc:
        raise InvalidAnswer("invalid_json", f"{exc.msg} at char {exc.pos}") from None


def _check_expression(text: str, where: str, config: ValidationConfig, forbidden) -> str:
    text = normalize_expression(text)
    if not text:
        raise InvalidAnswer("too_short", f"{where} is empty")
    if text != text.lower():
        raise InvalidAnswer("not_lowercase", f"{where} has capitals: {text!r}")
    if not _ALLOWED_CHARS.match(text):
        raise InvalidAnswer("punctuation", f"{where} has punctuation or symbols: {text!r}")
    for pattern in forbidden:
        match = pattern.search(text)
        if match:
            raise InvalidAnswer("forbidden_word", f"{where} mentions {match.group(0)!r}: {text!r}")
    words = len(text.split())
    if words < config.min_words:
        raise InvalidAnswer("too_short", f"{where} has {words} words (< {config.min_words})")
    if words > config.max_words:
        raise InvalidAnswer("too_long", f"{where} has {words} words (> {config.max_words})")
    return text


def validate_answer(
    text: str | None,
    originals: Sequence[OriginalExpression],
    config: ValidationConfig,
    finish_reason: str | None = None,
) -> ValidatedAnswer:
    """Parse and validate one answer for a target with these ``originals``.

    Raises:
        InvalidAnswer: the first problem found (``reason`` codes: ``truncated``, ``refusal``,
            ``empty_answer``, ``invalid_json``, ``schema``, ``count_mismatch``,
            ``original_mismatch``, ``not_lowercase``, ``punctuation``, ``forbidden_word``,
            ``too_short``, ``too_long``, ``duplicate_of_original``, ``duplicate``).
    """
    if finish_reason == "length":
        raise InvalidAnswer("truncated", "the answer hit the token limit")
    if finish_reason == "content_filter":
        raise InvalidAnswer("refusal", "the answer was stopped by the content filter")
    data = parse_answer_text(text)
    try:
        answer = EnhancementAnswer.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "answer"
        raise InvalidAnswer("schema", f"{where}: {first['msg']}") from None
    n = len(originals)
    if len(answer.enhanced_expressions) != n:
        raise InvalidAnswer(
            "count_mismatch", f"{len(answer.enhanced_expressions)} variations for {n} originals"
        )
    if len(answer.unique_expressions) != config.num_unique:
        raise InvalidAnswer(
            "count_mismatch",
            f"{len(answer.unique_expressions)} unique expressions, expected {config.num_unique}",
        )
    forbidden = [re.compile(p) for p in config.forbidden_patterns]
    by_index: dict[int, str] = {}
    for item in answer.enhanced_expressions:
        if not 1 <= item.index <= n or item.index in by_index:
            raise InvalidAnswer("original_mismatch", f"index {item.index} is unknown or repeated")
        original = originals[item.index - 1]
        if _comparable(item.original_expression) != _comparable(original.text):
            raise InvalidAnswer(
                "original_mismatch",
                f"index {item.index} echoes {item.original_expression!r}, not {original.text!r}",
            )
        by_index[item.index] = _check_expression(
            item.variation, f"variation {item.index}", config, forbidden
        )
    uniques = [
        _check_expression(text, f"unique expression {i}", config, forbidden)
        for i, text in enumerate(answer.unique_expressions, start=1)
    ]
    analysis = " ".join(answer.unique_description.split())
    if not analysis:
        raise InvalidAnswer("too_short", "unique_description is empty")
    if len(analysis) > config.max_analysis_chars:
        raise InvalidAnswer("too_long", f"unique_description has {len(analysis)} characters")
    original_texts = {_comparable(o.text) for o in originals}
    seen: set[str] = set()
    outputs = [(f"variation {i}", by_index[i]) for i in sorted(by_index)]
    outputs += [(f"unique expression {i}", t) for i, t in enumerate(uniques, start=1)]
    for where, output in outputs:
        key = _comparable(output)
        if key in original_texts:
            raise InvalidAnswer("duplicate_of_original", f"{where} repeats an original: {output!r}")
        if key in seen:
            raise InvalidAnswer("duplicate", f"{where} repeats another output: {output!r}")
        seen.add(key)
    return ValidatedAnswer(
        variations=tuple(Variation(originals[i - 1], by_index[i]) for i in sorted(by_index)),
        analysis=analysis,
        uniques=tuple(uniques),
    )
