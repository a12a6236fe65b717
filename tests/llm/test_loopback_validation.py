"""The loopback server refuses malformed requests the way the OpenAI API does (HTTP 400 with the
API's error object), so a malformed request fails here instead of in production.

Requests go through the real ``openai`` SDK. The strict-schema rules are checked against the SDK's
own strict-schema converter (``openai.lib._pydantic``), which produces the schemas the API accepts.
"""

from __future__ import annotations

import base64
import copy
import io
import json

import openai
import pytest
from llm_fixtures import make_config
from openai.lib._parsing._completions import type_to_response_format_param
from openai.lib._pydantic import _ensure_strict_json_schema, to_strict_json_schema
from openai.types.chat import ChatCompletion
from PIL import Image

from llm.config import ValidationConfig, load_enhance_config
from llm.enhance import RunOptions, enhance
from llm.ledger import Ledger
from llm.loopback_server import LoopbackServer, RequestRejected, check_chat_request
from llm.schema import EnhancementAnswer, answer_json_schema, response_format
from llm.targets import discover_annotations

QUIET = RunOptions(progress=False)


def _image_bytes(image_format: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buffer, format=image_format)
    return buffer.getvalue()


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


PNG = _image_bytes("PNG")
JPEG = _image_bytes("JPEG")


def o3_body() -> dict:
    """A well-formed o3 request in the shape ``llm enhance`` sends."""
    return {
        "model": "o3",
        "messages": [
            {"role": "system", "content": "Answer in JSON."},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": _data_url("image/png", PNG)}},
                    {"type": "image_url", "image_url": {"url": _data_url("image/jpeg", JPEG)}},
                    {"type": "text", "text": "Target: a single object, category car."},
                ],
            },
        ],
        "max_completion_tokens": 512,
        "reasoning_effort": "low",
        "seed": 0,
        "response_format": response_format(2, ValidationConfig(), array_bounds=True),
    }


def _with(path: tuple, value) -> dict:
    """``o3_body()`` with the item at ``path`` set to ``value`` (deleted for ``DELETE``)."""
    body = o3_body()
    node = body
    for key in path[:-1]:
        node = node[key]
    if value is DELETE:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return body


DELETE = object()
USER_PART = ("messages", 1, "content", 0)
INVALID_ROLE = (
    "Invalid value: 'bot'. Supported values are: 'system', 'assistant', 'user', 'function', "
    "'tool', and 'developer'."
)
NOT_A_DATA_URL = (
    "Invalid 'messages[1].content[0].image_url.url'. Expected a base64-encoded data URL with an "
    "image MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got "
)

# (request, message, param, code) as the API answers them.
MALFORMED = [
    (_with(("model",), DELETE), "you must provide a model parameter", None, None),
    (
        _with(("messages",), DELETE),
        "Missing required parameter: 'messages'.",
        "messages",
        "missing_required_parameter",
    ),
    (
        _with(("messages",), []),
        "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
        "empty array instead.",
        "messages",
        "empty_array",
    ),
    (_with(("messages", 0, "role"), "bot"), INVALID_ROLE, "messages[0].role", "invalid_value"),
    (
        _with(("messages", 1, "content"), DELETE),
        "Missing required parameter: 'messages[1].content'.",
        "messages[1].content",
        "missing_required_parameter",
    ),
    (
        _with(("messages", 0, "content"), [{"type": "image_url", "image_url": {"url": "x"}}]),
        "Invalid value: 'image_url'. Supported values are: 'text'.",
        "messages[0].content[0].type",
        "invalid_value",
    ),
    (
        _with((*USER_PART, "type"), "image"),
        "Invalid value: 'image'. Supported values are: 'text', 'image_url', 'input_audio', and "
        "'file'.",
        "messages[1].content[0].type",
        "invalid_value",
    ),
    (
        _with(("messages", 1, "content", 2, "text"), DELETE),
        "Missing required parameter: 'messages[1].content[2].text'.",
        "messages[1].content[2].text",
        "missing_required_parameter",
    ),
    (
        _with((*USER_PART, "image_url", "url"), base64.b64encode(PNG).decode()),
        NOT_A_DATA_URL + "a value without the 'data:' prefix.",
        "messages[1].content[0].image_url.url",
        "invalid_value",
    ),
    (
        _with((*USER_PART, "image_url", "url"), "data:image/png;base64,not base64!"),
        NOT_A_DATA_URL + "invalid base64 data.",
        "messages[1].content[0].image_url.url",
        "invalid_value",
    ),
    (
        _with((*USER_PART, "image_url", "url"), _data_url("text/plain", b"hello")),
        "Invalid MIME type. Only image types are supported.",
        "messages[1].content[0].image_url.url",
        "invalid_image_format",
    ),
    (
        _with((*USER_PART, "image_url", "url"), _data_url("image/png", b"BM" + bytes(60))),
        "You uploaded an unsupported image. Please make sure your image has of one the following "
        "formats: ['png', 'jpeg', 'gif', 'webp'].",
        "messages[1].content[0].image_url.url",
        "invalid_image_format",
    ),
    (
        # PNG bytes labelled as JPEG (the legacy Aerial-D scripts sent exactly this).
        _with((*USER_PART, "image_url", "url"), _data_url("image/jpeg", PNG)),
        "Invalid 'messages[1].content[0].image_url.url': the data URL declares image/jpeg but "
        "the bytes are a png image.",
        "messages[1].content[0].image_url.url",
        "invalid_image_format",
    ),
    (
        _with((*USER_PART, "image_url", "detail"), "medium"),
        "Invalid value: 'medium'. Supported values are: 'auto', 'low', and 'high'.",
        "messages[1].content[0].image_url.detail",
        "invalid_value",
    ),
    (
        _with(("max_tokens",), 512),
        "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
        "'max_completion_tokens' instead.",
        "max_tokens",
        "unsupported_parameter",
    ),
    (
        _with(("temperature",), 0.8),
        "Unsupported value: 'temperature' does not support 0.8 with this model. Only the default "
        "(1) value is supported.",
        "temperature",
        "unsupported_value",
    ),
    (
        _with(("logprobs",), True),
        "Unsupported parameter: 'logprobs' is not supported with this model.",
        "logprobs",
        "unsupported_parameter",
    ),
    (
        _with(("reasoning_effort",), "maximum"),
        "Invalid value: 'maximum'. Supported values are: 'low', 'medium', and 'high'.",
        "reasoning_effort",
        "invalid_value",
    ),
    (
        _with(("model",), "gpt-4o"),
        "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
        "reasoning_effort",
        "unsupported_parameter",
    ),
    (_with(("top_k",), 20), "Unrecognized request argument supplied: top_k", None, None),
    (
        _with(("max_completion_tokens",), 0),
        "Invalid 'max_completion_tokens': integer below minimum value. Expected a value >= 1, "
        "but got 0 instead.",
        "max_completion_tokens",
        "integer_below_min_value",
    ),
    (
        _with(("seed",), "0"),
        "Invalid type for 'seed': expected an integer, but got a string instead.",
        "seed",
        "invalid_type",
    ),
    (
        _with(("response_format",), {"type": "json"}),
        "Invalid value: 'json'. Supported values are: 'text', 'json_object', and 'json_schema'.",
        "response_format.type",
        "invalid_value",
    ),
    (
        _with(("response_format", "json_schema", "name"), "aeriald enhancement"),
        "Invalid 'response_format.json_schema.name': string does not match pattern. Expected a "
        "string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
        "response_format.json_schema.name",
        "invalid_value",
    ),
]


@pytest.fixture(scope="module")
def server():
    with LoopbackServer() as running:
        yield running


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def test_well_formed_requests_are_answered(client):
    completion = client.post("/chat/completions", body=o3_body(), cast_to=ChatCompletion)
    assert completion.choices[0].message.content
    gpt = o3_body()
    gpt.update(model="gpt-4o", temperature=0.2, max_tokens=100)
    del gpt["reasoning_effort"]
    client.post("/chat/completions", body=gpt, cast_to=ChatCompletion)
    # Servers that are not OpenAI (vLLM, transformers serve) take their own sampling keys.
    local = o3_body()
    local.update(model="gemma-aerial-12b", temperature=0.8, top_k=20)
    client.post("/chat/completions", body=local, cast_to=ChatCompletion)


@pytest.mark.parametrize(("body", "message", "param", "code"), MALFORMED)
def test_malformed_requests_get_the_api_400(server, client, body, message, param, code):
    answered = len(server.requests) - len(server.rejections)
    with pytest.raises(openai.BadRequestError) as caught:
        client.post("/chat/completions", body=body, cast_to=ChatCompletion)
    error = caught.value
    assert error.status_code == 400
    assert error.body == {
        "message": message,
        "type": "invalid_request_error",
        "param": param,
        "code": code,
    }
    # Refused before any responder ran.
    assert len(server.requests) - len(server.rejections) == answered


def test_unparsable_body_is_a_400(server):
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=b'{"model": "o3", "messages": [',
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 400


# ------------------------------------------------------------------------------ strict schemas


def _schema_error(schema) -> str | None:
    try:
        check_chat_request(_with(("response_format", "json_schema", "schema"), schema))
    except RequestRejected as rejected:
        assert rejected.param == "response_format"
        return rejected.message
    return None


@pytest.mark.parametrize("array_bounds", [True, False])
def test_our_answer_schema_is_already_strict_for_the_sdk(array_bounds):
    """The SDK's converter turns any schema into the strict form the API requires; ours must be a
    fixed point of it (every object closed, every property required) and pass the server."""
    ours = answer_json_schema(3, ValidationConfig(), array_bounds)
    strict = _ensure_strict_json_schema(copy.deepcopy(ours), path=(), root=copy.deepcopy(ours))
    assert strict == ours
    assert _schema_error(ours) is None


def test_schemas_the_sdk_builds_are_accepted():
    """The SDK's own strict schema of our pydantic answer model ($defs, $ref, titles) passes."""
    sdk_format = type_to_response_format_param(EnhancementAnswer)
    assert sdk_format["json_schema"]["strict"] is True
    body = o3_body()
    body["response_format"] = sdk_format
    check_chat_request(body)
    assert _schema_error(to_strict_json_schema(EnhancementAnswer)) is None


def _structure(schema: dict, root: dict) -> dict:
    """A schema without its prose (titles, descriptions) or array bounds, ``$ref`` resolved."""
    if "$ref" in schema:
        return _structure(root["$defs"][schema["$ref"].split("/")[-1]], root)
    kept = {}
    for key, value in schema.items():
        if key in ("title", "description", "minItems", "maxItems", "$defs"):
            continue
        if key == "properties":
            value = {name: _structure(child, root) for name, child in value.items()}
        elif key == "items":
            value = _structure(value, root)
        kept[key] = value
    return kept


@pytest.mark.parametrize("array_bounds", [True, False])
def test_the_answer_schema_describes_the_validated_model(array_bounds):
    """The schema sent to the API and the pydantic model answers are validated with agree: the
    SDK's strict schema of the model has the same types, keys and closure (prose aside)."""
    ours = answer_json_schema(3, ValidationConfig(num_unique=2), array_bounds)
    sdk = to_strict_json_schema(EnhancementAnswer)
    assert _structure(ours, ours) == _structure(sdk, sdk)
    enhanced = ours["properties"]["enhanced_expressions"]
    unique = ours["properties"]["unique_expressions"]
    if array_bounds:
        assert (enhanced["minItems"], enhanced["maxItems"]) == (3, 3)
        assert (unique["minItems"], unique["maxItems"]) == (2, 2)
    else:
        assert not {"minItems", "maxItems"} & {*enhanced, *unique}
    prose = [ours["properties"]["unique_description"]["description"]]
    prose += [item["description"] for item in enhanced["items"]["properties"].values()]
    assert all(text and text == text.strip() and text[0].islower() for text in prose)


def _answer_schema() -> dict:
    return answer_json_schema(2, ValidationConfig(), array_bounds=True)


def _open_nested_object() -> dict:
    schema = _answer_schema()
    del schema["properties"]["enhanced_expressions"]["items"]["additionalProperties"]
    return schema


def _optional_property() -> dict:
    schema = _answer_schema()
    schema["properties"]["enhanced_expressions"]["items"]["required"].remove("variation")
    return schema


def _with_keyword(where: tuple, keyword: str, value) -> dict:
    schema = _answer_schema()
    node = schema
    for key in where:
        node = node[key]
    node[keyword] = value
    return schema


ITEM = ("properties", "enhanced_expressions", "items")


@pytest.mark.parametrize(
    ("schema", "problem"),
    [
        (
            _open_nested_object(),
            "In context=('properties', 'enhanced_expressions', 'items'), 'additionalProperties' "
            "is required to be supplied and to be false.",
        ),
        (
            _optional_property(),
            "In context=('properties', 'enhanced_expressions', 'items'), 'required' is required "
            "to be supplied and to be an array including every key in properties. Missing "
            "'variation'.",
        ),
        (
            _with_keyword(("properties", "unique_description"), "minLength", 3),
            "In context=('properties', 'unique_description'), 'minLength' is not permitted.",
        ),
        (
            _with_keyword(("properties", "unique_expressions"), "uniqueItems", True),
            "In context=('properties', 'unique_expressions'), 'uniqueItems' is not permitted.",
        ),
        (
            _with_keyword((*ITEM, "properties", "variation"), "default", "x"),
            "In context=('properties', 'enhanced_expressions', 'items', 'properties', "
            "'variation'), 'default' is not permitted.",
        ),
        (
            _with_keyword(("properties", "unique_expressions", "items"), "$ref", "#/$defs/nope"),
            "In context=('properties', 'unique_expressions', 'items'), reference '#/$defs/nope' "
            "can't be resolved.",
        ),
    ],
)
def test_schemas_outside_the_strict_subset_are_refused(schema, problem):
    assert _schema_error(schema) == (
        "Invalid schema for response_format 'aeriald_enhancement': " + problem
    )


def test_the_sdk_agrees_which_schemas_are_not_strict():
    """Where the SDK's converter would have to change a schema, the server refuses it."""
    for schema in (_open_nested_object(), _optional_property()):
        fixed = _ensure_strict_json_schema(copy.deepcopy(schema), path=(), root=schema)
        assert fixed != schema and fixed == _answer_schema()
        assert _schema_error(schema) is not None


def test_the_root_must_be_an_object():
    array_root = {"type": "array", "items": {"type": "string"}}
    assert _schema_error(array_root) == (
        "Invalid schema for response_format 'aeriald_enhancement': schema must be a JSON Schema "
        "of 'type: \"object\"', got 'type: \"array\"'."
    )


def test_json_object_mode_needs_the_word_json():
    body = o3_body()
    body["response_format"] = {"type": "json_object"}
    check_chat_request(body)  # the system turn says "JSON"
    body["messages"][0]["content"] = "Answer briefly."
    with pytest.raises(RequestRejected, match="must contain the word 'json'"):
        check_chat_request(body)


# ------------------------------------------------------------------- the project's own requests


def _o3_config(base_url: str, **sections):
    overrides = {
        "backend": {"base_url": base_url, "api_key_env": "LLM_TEST_KEY"},
        "render": {"image_size": 64},
        "queue": {"backoff_initial_s": 0.01, "backoff_max_s": 0.05},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_enhance_config("o3", **overrides)


@pytest.mark.parametrize("image_format", ["png", "jpeg"])
def test_the_shipped_configs_send_requests_the_api_accepts(dataset, image_format):
    render = {"image_format": image_format}
    with LoopbackServer() as server:
        o3 = _o3_config(server.base_url, render=render)
        summary = enhance(o3, discover_annotations(dataset), dataset / "o3", QUIET)
        assert (summary.ok, server.rejections) == (12, [])
        assert {body["model"] for body in server.requests} == {"o3"}
        vllm = load_enhance_config(
            "vllm_gemma3",
            backend={"base_url": server.base_url, "api_key_env": "LLM_TEST_KEY"},
            render={"image_size": 64, **render},
        )
        options = RunOptions(redo=True, progress=False)
        summary = enhance(vllm, discover_annotations(dataset), dataset / "vllm", options)
        assert (summary.ok, server.rejections) == (12, [])


def test_a_config_the_api_refuses_fails_each_target_once_without_retries(dataset):
    with LoopbackServer() as server:
        config = _o3_config(server.base_url, sampling={"max_tokens": 256})
        summary = enhance(config, discover_annotations(dataset), dataset / "work", QUIET)
        assert len(server.requests) == len(server.rejections) == 12  # one request per target
    assert (summary.ok, summary.failed) == (0, 12)
    assert summary.failure_reasons == {"http_400": 12}
    record = Ledger(dataset / "work" / "ledger.jsonl").latest()[
        "train/annotations/P0000_patch_000000#object/1"
    ]
    assert record["status"] == "failed" and record["reason"] == "http_400"
    assert "'max_tokens' is not supported with this model" in record["detail"]


def test_make_config_of_the_tests_is_valid_for_the_server(dataset):
    """The generic test config (model 'teacher') passes too, so other tests exercise real bodies."""
    with LoopbackServer() as server:
        config = make_config(server.base_url)
        summary = enhance(config, discover_annotations(dataset), dataset / "w", QUIET)
        assert summary.ok == 12 and server.rejections == []


# ------------------------------------------------------------------------------------ batches


def test_batch_requests_are_validated(server, client):
    good = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    uploaded = client.files.create(file=("in.jsonl", good * 2), purpose="batch")
    with pytest.raises(openai.BadRequestError) as caught:
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="48h"
        )
    assert caught.value.body["message"] == "Invalid value: '48h'. Supported values are: '24h'."
    other = client.files.create(file=("x.jsonl", good), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match="purpose 'batch'"):
        client.batches.create(
            input_file_id=other.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = client.batches.retrieve(batch.id)
    assert failed.status == "failed"
    assert [(e.code, e.line) for e in failed.errors.data] == [("duplicate_custom_id", 2)]


def test_a_malformed_batch_line_lands_in_the_error_file_with_its_400(server, client):
    good, bad = o3_body(), _with(("max_tokens",), 64)
    lines = [
        {"custom_id": name, "method": "POST", "url": "/v1/chat/completions", "body": body}
        for name, body in (("good", good), ("bad", bad))
    ]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    uploaded = client.files.create(file=("in.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    while batch.status not in ("completed", "failed"):
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed"
    assert (batch.request_counts.completed, batch.request_counts.failed) == (1, 1)
    (error,) = [
        json.loads(line) for line in client.files.content(batch.error_file_id).text.splitlines()
    ]
    assert error["custom_id"] == "bad" and error["response"]["status_code"] == 400
    assert error["response"]["body"]["error"]["param"] == "max_tokens"
