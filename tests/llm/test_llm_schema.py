"""Strict validation of answers, the JSON schema and the request body."""

from __future__ import annotations

import json

import pytest
from llm_fixtures import make_config

from llm.backend import chat_request_body
from llm.config import ConfigError, ValidationConfig, load_enhance_config
from llm.schema import InvalidAnswer, response_format, validate_answer
from llm.targets import OriginalExpression

ORIGINALS = (
    OriginalExpression("0", "the small vehicle in the bottom right"),
    OriginalExpression("3", "the lowest small vehicle"),
)
RULES = ValidationConfig()


def answer(**changes) -> dict:
    data = {
        "enhanced_expressions": [
            {
                "index": 1,
                "original_expression": ORIGINALS[0].text,
                "variation": "the little car at the lower right",
            },
            {
                "index": 2,
                "original_expression": ORIGINALS[1].text,
                "variation": "the bottommost car",
            },
        ],
        "unique_description": "two cars sit beside a grey road; the lower one is by the trees",
        "unique_expressions": [
            "the small car parked beside the grey road at the bottom right",
            "the lowest small car next to the row of green trees",
        ],
    }
    data.update(changes)
    return data


def reason_of(data, finish_reason=None) -> str:
    text = data if isinstance(data, str) else json.dumps(data)
    with pytest.raises(InvalidAnswer) as caught:
        validate_answer(text, ORIGINALS, RULES, finish_reason)
    return caught.value.reason


def test_a_valid_answer_links_each_variation_to_its_original():
    result = validate_answer(json.dumps(answer()), ORIGINALS, RULES)
    assert [v.original.id for v in result.variations] == ["0", "3"]
    assert result.variations[1].text == "the bottommost car"
    assert result.to_dict()["enhanced_expressions"][0]["index"] == 1
    # Items out of order are put back in the order of the originals; a final "." is dropped.
    shuffled = answer()
    shuffled["enhanced_expressions"].reverse()
    shuffled["unique_expressions"][0] += "."
    again = validate_answer("```json\n" + json.dumps(shuffled) + "\n```", ORIGINALS, RULES)
    assert again.source_ids() == ["0", "3"]
    assert again.uniques[0] == "the small car parked beside the grey road at the bottom right"


def _with_variation(index: int, text: str) -> dict:
    data = answer()
    data["enhanced_expressions"][index]["variation"] = text
    return data


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("sure, here you go: {", "invalid_json"),
        ("", "empty_answer"),
        ({"enhanced_expressions": []}, "schema"),
        (answer(extra_key="x"), "schema"),
        (answer(unique_expressions="one string"), "schema"),
        (answer(enhanced_expressions=answer()["enhanced_expressions"][:1]), "count_mismatch"),
        (answer(unique_expressions=["the car beside the grey road"]), "count_mismatch"),
        (_with_variation(0, "The little car at the lower right"), "not_lowercase"),
        (_with_variation(0, "the little car, at the lower right"), "punctuation"),
        (_with_variation(0, "the car inside the red box"), "forbidden_word"),
        (_with_variation(0, "the highlighted small car"), "forbidden_word"),
        (_with_variation(0, "the car shown in the second image"), "forbidden_word"),
        (_with_variation(0, "car"), "too_short"),
        (_with_variation(0, " ".join(["the"] * 41)), "too_long"),
        (_with_variation(0, "the small vehicle in the bottom right"), "duplicate_of_original"),
        (_with_variation(0, "the bottommost car"), "duplicate"),
        (answer(unique_description=" "), "too_short"),
    ],
)
def test_invalid_answers_are_rejected_with_a_reason(data, reason):
    assert reason_of(data) == reason


def test_index_and_echo_of_the_originals_are_checked():
    wrong_echo = answer()
    wrong_echo["enhanced_expressions"][1]["original_expression"] = "the topmost small vehicle"
    assert reason_of(wrong_echo) == "original_mismatch"
    repeated = answer()
    repeated["enhanced_expressions"][1]["index"] = 1
    assert reason_of(repeated) == "original_mismatch"
    assert reason_of(answer(), finish_reason="length") == "truncated"


def test_schema_and_request_body():
    schema = response_format(3, RULES, array_bounds=True)["json_schema"]
    assert schema["strict"] is True
    properties = schema["schema"]["properties"]
    assert properties["enhanced_expressions"]["minItems"] == 3
    assert properties["enhanced_expressions"]["maxItems"] == 3
    assert properties["unique_expressions"]["maxItems"] == 2
    assert schema["schema"]["additionalProperties"] is False
    assert (
        "minItems"
        not in response_format(3, RULES, False)["json_schema"]["schema"]["properties"][
            "unique_expressions"
        ]
    )
    config = make_config("http://x", sampling={"seed": 7, "extra_body": {"top_k": 20}})
    body = chat_request_body(config, [{"role": "user", "content": "hi"}], 2, sample_index=2)
    assert body["seed"] == 9 and body["top_k"] == 20 and body["model"] == "teacher"
    assert (
        body["response_format"]["json_schema"]["schema"]["properties"]["enhanced_expressions"][
            "minItems"
        ]
        == 2
    )
    plain = make_config("http://x", backend={"structured_output": "none"})
    assert "response_format" not in chat_request_body(plain, [], 2, 0)


def test_config_files_load_and_typos_are_named(tmp_path):
    for name in ("o3", "vllm_gemma3", "transformers_serve"):
        assert load_enhance_config(name).backend.model
    bad = tmp_path / "bad.yaml"
    bad.write_text("backend: {model: o3}\nqueue: {concurency: 4}\n")
    with pytest.raises(ConfigError, match="queue.concurency"):
        load_enhance_config(bad)
