"""Answers that must be refused, one per documented rule, with the exact reason recorded.

Every forbidden pattern of the default validation config is exercised by a word it must catch (so
dropping one, e.g. ``mask``, fails here), next to near-misses it must let through. Truncated and
filtered answers are refused even when their JSON happens to be complete.
"""

from __future__ import annotations

import json

import pytest
from llm_fixtures import make_config

from llm.config import DEFAULT_FORBIDDEN_PATTERNS, ValidationConfig
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, Reply, well_formed_answer, well_formed_reply
from llm.schema import InvalidAnswer, validate_answer
from llm.targets import OriginalExpression, discover_annotations

ORIGINALS = (OriginalExpression("0", "the small vehicle in the bottom right"),)
RULES = ValidationConfig()

# One phrase per default pattern, in the order of DEFAULT_FORBIDDEN_PATTERNS, and the word the
# validator must name.
FORBIDDEN = [
    ("the car inside the box", "box"),
    ("the car drawn with a bounding line", "bounding"),
    ("the car under the mask", "mask"),
    ("the car shown by the outline", "outline"),
    ("the highlighted car near the road", "highlighted"),
    ("the car below the overlay", "overlay"),
    ("the tinted car near the road", "tinted"),
    ("the marked car near the road", "marked"),
    ("the car with white markings", "markings"),
    ("the car in the red rectangle", "red rectangle"),
    ("the car shown in the second image", "second image"),
    ("the car seen in the close up", "the close up"),
    ("the cropped car near the road", "cropped"),
]
INFLECTIONS = [
    ("the car between two boxes", "boxes"),
    ("the masked car near the road", "masked"),
    ("the car with two masks", "masks"),
    ("the car seen by masking", "masking"),
    ("the outlined car near the road", "outlined"),
    ("the car in both images", "both images"),
    ("the car in the crop", "the crop"),
]
ALLOWED = [
    "all water in the image",  # the rule-based semantic expressions say this
    "the red car beside the boxwood hedge",
    "the car next to the tinting shop",
    "the car near the damask awning",
    "the car in the red light district",
]


def _answer_with_variation(text: str) -> str:
    answer = {
        "enhanced_expressions": [
            {"index": 1, "original_expression": ORIGINALS[0].text, "variation": text}
        ],
        "unique_description": "a small car parked beside a grey road",
        "unique_expressions": [
            "the small car beside the grey road",
            "the small car next to the green trees",
        ],
    }
    return json.dumps(answer)


def test_every_default_pattern_is_exercised():
    assert len(FORBIDDEN) == len(DEFAULT_FORBIDDEN_PATTERNS)


@pytest.mark.parametrize(("text", "word"), FORBIDDEN + INFLECTIONS)
def test_forbidden_words_are_refused_and_named(text, word):
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(_answer_with_variation(text), ORIGINALS, RULES)
    assert caught.value.reason == "forbidden_word"
    assert caught.value.detail == f"variation 1 mentions {word!r}: {text!r}"


@pytest.mark.parametrize("text", ALLOWED)
def test_near_misses_are_accepted(text):
    answer = validate_answer(_answer_with_variation(text), ORIGINALS, RULES)
    assert answer.variations[0].text == text


def test_unique_expressions_are_checked_too():
    data = json.loads(_answer_with_variation("the little car at the lower right"))
    data["unique_expressions"][1] = "the car under the red mask"
    with pytest.raises(InvalidAnswer, match=r"unique expression 2 mentions 'mask'"):
        validate_answer(json.dumps(data), ORIGINALS, RULES)


@pytest.mark.parametrize(
    ("finish_reason", "reason"), [("length", "truncated"), ("content_filter", "refusal")]
)
def test_cut_answers_are_refused_even_when_their_json_is_complete(finish_reason, reason):
    complete = _answer_with_variation("the little car at the lower right")
    validate_answer(complete, ORIGINALS, RULES)  # valid on its own
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(complete, ORIGINALS, RULES, finish_reason)
    assert caught.value.reason == reason


def test_truncated_and_refused_answers_are_recorded_per_attempt(dataset):
    def respond(body, seen):
        text = json.dumps(well_formed_answer(body))
        if seen == 0:
            return Reply(text, finish_reason="length")
        if seen == 1:
            return Reply(None, finish_reason="content_filter")
        return well_formed_reply(body, seen)

    with LoopbackServer(respond) as server:
        config = make_config(server.base_url, queue={"max_resamples": 2})
        summary = enhance(
            config, discover_annotations(dataset), dataset / "w", RunOptions(progress=False)
        )
        assert len(server.requests) == 3 * 12
    assert (summary.ok, summary.failed) == (12, 0)
    record = Ledger(dataset / "w" / "ledger.jsonl").latest()[
        "train/annotations/P0000_patch_000000#object/2"
    ]
    attempts = record["attempts"]
    assert [(a["sample"], a["finish_reason"], a.get("reason")) for a in attempts] == [
        (0, "length", "truncated"),
        (1, "content_filter", "refusal"),
        (2, "stop", None),
    ]


@pytest.mark.parametrize(
    ("variation", "reason", "detail"),
    [
        (".", "too_short", "variation 1 is empty"),
        ("The little car", "not_lowercase", "variation 1 has capitals: 'The little car'"),
        ("the car, left", "punctuation", "variation 1 has punctuation or symbols: 'the car, left'"),
        ("the car", "too_short", "variation 1 has 2 words (< 3)"),
        (" ".join(["car"] * 41), "too_long", "variation 1 has 41 words (> 40)"),
    ],
)
def test_each_expression_rule_records_its_reason_and_where(variation, reason, detail):
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(_answer_with_variation(variation), ORIGINALS, RULES)
    assert (caught.value.reason, caught.value.detail) == (reason, detail)


@pytest.mark.parametrize(
    ("text", "finish_reason", "reason", "detail"),
    [
        ("  ", None, "empty_answer", "the answer has no content"),
        ('{"a": ', None, "invalid_json", "Expecting value at char 5"),
        ("{}", "length", "truncated", "the answer hit the token limit"),
        ("{}", "content_filter", "refusal", "the answer was stopped by the content filter"),
    ],
)
def test_unusable_answers_record_their_reason(text, finish_reason, reason, detail):
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(text, ORIGINALS, RULES, finish_reason)
    assert (caught.value.reason, caught.value.detail) == (reason, detail)


def test_limits_are_inclusive_and_a_final_full_stop_is_dropped():
    longest = " ".join(["car"] * 40)
    answer = validate_answer(_answer_with_variation(longest), ORIGINALS, RULES)
    assert answer.variations[0].text == longest
    spaced = validate_answer(
        _answer_with_variation("the little car at the lower right ."), ORIGINALS, RULES
    )
    assert spaced.variations[0].text == "the little car at the lower right"


def test_the_canonical_answer_json_keeps_every_key_and_unicode():
    answer = validate_answer(_answer_with_variation("the car by the café"), ORIGINALS, RULES)
    expected = {
        "enhanced_expressions": [
            {
                "index": 1,
                "original_expression": ORIGINALS[0].text,
                "variation": "the car by the café",
            }
        ],
        "unique_description": "a small car parked beside a grey road",
        "unique_expressions": [
            "the small car beside the grey road",
            "the small car next to the green trees",
        ],
    }
    assert answer.to_dict() == expected
    assert answer.to_json() == json.dumps(expected, ensure_ascii=False)
    assert "café" in answer.to_json()


TWO = (
    OriginalExpression("0", "the small vehicle in the bottom right"),
    OriginalExpression("4", "the lowest small vehicle"),
)


def _two_answer(items: list[tuple[int, str, str]], **changes) -> str:
    data = {
        "enhanced_expressions": [
            {"index": index, "original_expression": echo, "variation": variation}
            for index, echo, variation in items
        ],
        "unique_description": "two cars beside a grey road",
        "unique_expressions": ["the car beside the grey road", "the car next to the trees"],
    }
    data.update(changes)
    return json.dumps(data)


FIRST = (1, TWO[0].text, "the little car at the lower right")
SECOND = (2, TWO[1].text, "the bottommost little car")


@pytest.mark.parametrize(
    ("text", "reason", "detail"),
    [
        (
            _two_answer([FIRST, (2, TWO[1].text, 5)]),
            "schema",
            "enhanced_expressions.1.variation: Input should be a valid string",
        ),
        (
            "[]",
            "schema",
            "answer: Input should be a valid dictionary or instance of EnhancementAnswer",
        ),
        (_two_answer([FIRST]), "count_mismatch", "1 variations for 2 originals"),
        (
            _two_answer([FIRST, SECOND], unique_expressions=["the car beside the grey road"]),
            "count_mismatch",
            "1 unique expressions, expected 2",
        ),
        (
            _two_answer([FIRST, (3, TWO[1].text, "x y z")]),
            "original_mismatch",
            "index 3 is unknown or repeated",
        ),
        (_two_answer([FIRST, FIRST]), "original_mismatch", "index 1 is unknown or repeated"),
        (
            _two_answer([FIRST, (2, "the top car", "the car at the top")]),
            "original_mismatch",
            "index 2 echoes 'the top car', not 'the lowest small vehicle'",
        ),
        (
            _two_answer([FIRST, SECOND], unique_description="  "),
            "too_short",
            "unique_description is empty",
        ),
        (
            _two_answer([FIRST, SECOND], unique_description="x" * 4001),
            "too_long",
            "unique_description has 4001 characters",
        ),
    ],
)
def test_answer_level_rules_record_their_reason_and_where(text, reason, detail):
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(text, TWO, RULES)
    assert (caught.value.reason, caught.value.detail) == (reason, detail)


def test_the_analysis_limit_is_inclusive():
    answer = validate_answer(
        _two_answer([FIRST, SECOND], unique_description="x" * 4000), TWO, RULES
    )
    assert len(answer.analysis) == 4000 and answer.source_ids() == ["0", "4"]


@pytest.mark.parametrize(
    ("uniques", "reason", "detail"),
    [
        (
            [TWO[1].text, "the car next to the trees"],
            "duplicate_of_original",
            "unique expression 1 repeats an original: 'the lowest small vehicle'",
        ),
        (
            ["the car next to the trees", "the bottommost little car"],
            "duplicate",
            "unique expression 2 repeats another output: 'the bottommost little car'",
        ),
    ],
)
def test_repeats_name_the_expression_that_repeats(uniques, reason, detail):
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(_two_answer([FIRST, SECOND], unique_expressions=uniques), TWO, RULES)
    assert (caught.value.reason, caught.value.detail) == (reason, detail)
