"""A local server that speaks the OpenAI wire protocol with scripted answers.

It implements ``POST /v1/chat/completions``, ``POST /v1/files``, ``GET /v1/files/{id}[/content]``,
``POST /v1/batches`` and ``GET /v1/batches/{id}`` (HTTP/1.1 keep-alive, JSON bodies, multipart
uploads) on ``127.0.0.1``, so the real ``openai`` SDK path of ``llm enhance`` and ``llm batch`` can
be exercised without a model: by the tests, by ``benchmarks/llm_bench.py`` (client throughput), and
by ``llm loopback-server`` for a free dry run of a config on real annotations.

What it answers is decided by a *responder*: ``responder(body, seen) -> Reply``, where ``seen``
counts earlier requests with the same messages (so "429 first, then an answer" is easy to script).
The default responder, :func:`well_formed_reply`, returns an answer that passes validation, built
from the numbered originals and the category in the prompt.

Like the real API, the server refuses malformed chat requests with HTTP 400 and an OpenAI error
object before any responder runs (:func:`check_chat_request`; the rules and messages follow the
errors the OpenAI API returns):

- ``model`` and a non-empty ``messages`` array; roles ``system``/``developer``/``user``/
  ``assistant``/``tool``/``function`` with the content parts each role takes (text only for
  system and developer; text, ``image_url``, ``input_audio`` and ``file`` for users);
- images as ``http(s)`` URLs or base64 ``data:`` URLs of PNG, JPEG, GIF or WebP whose declared MIME
  type matches the bytes (stricter than OpenAI, which sniffs the bytes: a mislabelled image is a
  bug of ours even where a server tolerates it);
- types and ranges of the sampling parameters; for OpenAI model names, no unknown parameters;
- o-series reasoning models (``o1``, ``o3``, ``o4-mini``, ...): ``max_completion_tokens``, never
  ``max_tokens``; ``temperature``/``top_p`` only at their default 1; no penalties or logprobs;
  ``reasoning_effort`` one of ``low``/``medium``/``high`` (GPT models refuse it altogether);
- ``response_format``: ``json_object`` only when the messages mention JSON; ``json_schema`` with a
  valid name and, when ``strict``, a schema in the strict subset (object root, every object with
  ``additionalProperties: false`` and every property required, supported keywords only).

Batches are checked like the Batch API checks them: ``completion_window`` 24h, a supported
endpoint, an input file uploaded with purpose ``batch``; a file with an unparsable line, a missing
or duplicate ``custom_id``, another method or URL fails validation (status ``failed`` with one
error per line). Each line's body then goes through the chat checks above, so a malformed request
lands in the batch's error file with its 400.
"""

from __future__ import annotations

import base64
import binascii
import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A scripted answer: ``content`` with HTTP 200, or an error ``status`` (+ ``headers``).

    ``delay_s`` sleeps before answering (for timeouts and throughput runs).
    """

    content: str | None = None
    status: int = 200
    delay_s: float = 0.0
    finish_reason: str = "stop"
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[dict, int], Reply]

_ORIGINAL_LINE = re.compile(r"^(\d+)\. (.+)$", re.M)
_CATEGORY = re.compile(r"category (.+?)\.$", re.M)


def prompt_fields(body: dict) -> tuple[str, list[str]]:
    """``(category, originals)`` parsed from the user text of an ``llm`` request."""
    text = ""
    for message in body.get("messages", []):
        if message.get("role") == "user":
            content = message["content"]
            parts = content if isinstance(content, list) else [{"type": "text", "text": content}]
            text = "\n".join(p.get("text", "") for p in parts if p.get("type") == "text")
    category = _CATEGORY.search(text)
    return (category.group(1) if category else "object"), [
        m[1] for m in _ORIGINAL_LINE.findall(text)
    ]


def well_formed_answer(body: dict) -> dict:
    """An answer that passes :func:`llm.schema.validate_answer` for the request ``body``."""
    category, originals = prompt_fields(body)
    return {
        "enhanced_expressions": [
            {"index": i, "original_expression": text, "variation": f"{text} seen from above"}
            for i, text in enumerate(originals, start=1)
        ],
        "unique_description": f"the {category} stands beside a grey road with green trees",
        "unique_expressions": [
            f"the {category} next to the grey road",
            f"the {category} close to the green trees",
        ],
    }


def well_formed_reply(body: dict, seen: int) -> Reply:
    return Reply(content=json.dumps(well_formed_answer(body)))


def _messages_key(body: dict) -> str:
    return hashlib.sha256(json.dumps(body.get("messages"), sort_keys=True).encode()).hexdigest()


# Token estimates: 4 characters per text token, a fixed count per image (Gemma 3 encodes every
# image as 256 soft tokens plus two delimiters).
CHARS_PER_TOKEN = 4
TOKENS_PER_IMAGE = 258


def estimate_prompt_tokens(body: dict) -> int:
    chars, images = 0, 0
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        for part in parts:
            if part.get("type") == "text":
                chars += len(part.get("text", ""))
            else:
                images += 1
    return chars // CHARS_PER_TOKEN + images * TOKENS_PER_IMAGE


def _chat_completion(body: dict, reply: Reply, ids: itertools.count) -> dict:
    content = reply.content or ""
    usage = {
        "prompt_tokens": estimate_prompt_tokens(body),
        "completion_tokens": max(1, len(content) // CHARS_PER_TOKEN),
    }
    usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return {
        "id": f"chatcmpl-{next(ids)}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": f"{body.get('model', 'loopback')}-loopback",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content, "refusal": None},
                "finish_reason": reply.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def _error_body(status: int) -> dict:
    return {
        "error": {"message": f"loopback error {status}", "type": "loopback", "code": str(status)}
    }


# ------------------------------------------------------------------ request validation


_UNPARSABLE_BODY = "We could not parse the JSON body of your request."


class RequestRejected(Exception):
    """A request the API refuses: HTTP ``status`` with an OpenAI error object."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        status: int = 400,
    ):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status

    def error_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }


ROLES = ("system", "assistant", "user", "function", "tool", "developer")
# Content part types each role takes.
PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
IMAGE_DETAILS = ("auto", "low", "high")
REASONING_EFFORTS = ("low", "medium", "high")
# The sniffed format of image bytes and the MIME type that names it.
IMAGE_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "webp": "image/webp"}
_OPENAI_MODEL = re.compile(r"^(o\d|gpt-|chatgpt-)")
_REASONING_MODEL = re.compile(r"^o\d")
_SCHEMA_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_DATA_URL = re.compile(r"^data:([^;,]*)((?:;[^;,]*)*),(.*)$", re.S)
# Parameters of the chat-completions endpoint; OpenAI refuses any other top-level key (servers
# such as vLLM take extra sampling keys, so the check applies to OpenAI model names only).
CHAT_PARAMETERS = frozenset(
    [
        "model",
        "messages",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    ]
)
# Sampling parameters that o-series models refuse outright.
_REASONING_UNSUPPORTED = (
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
)
# JSON Schema keywords allowed in strict structured outputs.
STRICT_SCHEMA_KEYWORDS = frozenset(
    [
        "type",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "anyOf",
        "$ref",
        "$defs",
        "definitions",
        "enum",
        "const",
        "description",
        "title",
        "pattern",
        "format",
        "multipleOf",
        "maximum",
        "exclusiveMaximum",
        "minimum",
        "exclusiveMinimum",
        "minItems",
        "maxItems",
    ]
)
STRICT_MAX_NESTING = 10
BATCH_ENDPOINTS = ("/v1/responses", "/v1/chat/completions", "/v1/embeddings", "/v1/completions")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _supported(values: tuple[str, ...]) -> str:
    quoted = [f"'{value}'" for value in values]
    if len(quoted) == 1:
        return quoted[0]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}"


def _invalid_value(value: Any, param: str, allowed: tuple[str, ...]) -> RequestRejected:
    return RequestRejected(
        f"Invalid value: '{value}'. Supported values are: {_supported(allowed)}.",
        param,
        "invalid_value",
    )


def _missing(param: str) -> RequestRejected:
    return RequestRejected(
        f"Missing required parameter: '{param}'.", param, "missing_required_parameter"
    )


def _wrong_type(param: str, expected: str, value: Any) -> RequestRejected:
    return RequestRejected(
        f"Invalid type for '{param}': expected {expected}, but got "
        f"{_article(_json_type(value))} instead.",
        param,
        "invalid_type",
    )


def _check_number(body: dict, name: str, low: float, high: float | None, integer: bool) -> None:
    if name not in body or body[name] is None:
        return
    value = body[name]
    kind = "integer" if integer else "decimal"
    valid_type = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not valid_type:
        raise _wrong_type(name, f"{_article(kind)}", value)
    if value < low:
        raise RequestRejected(
            f"Invalid '{name}': {kind} below minimum value. Expected a value >= {low:g}, but got "
            f"{value} instead.",
            name,
            f"{kind}_below_min_value",
        )
    if high is not None and value > high:
        raise RequestRejected(
            f"Invalid '{name}': {kind} above maximum value. Expected a value <= {high:g}, but got "
            f"{value} instead.",
            name,
            f"{kind}_above_max_value",
        )


def sniff_image_format(data: bytes) -> str | None:
    """``'png'|'jpeg'|'gif'|'webp'`` from the first bytes, ``None`` for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _check_image_url(url: Any, param: str) -> None:
    if not isinstance(url, str):
        raise _wrong_type(param, "a string", url)
    if url.startswith(("http://", "https://")):
        return
    expected = (
        f"Invalid '{param}'. Expected a base64-encoded data URL with an image MIME type (e.g. "
        "'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU='), but got "
    )
    match = _DATA_URL.match(url)
    if match is None:
        raise RequestRejected(
            expected + "a value without the 'data:' prefix.", param, "invalid_value"
        )
    mime, options, payload = match.group(1).lower(), match.group(2), match.group(3)
    if ";base64" not in options.lower():
        raise RequestRejected(
            expected + "a data URL that is not base64-encoded.", param, "invalid_value"
        )
    if mime not in IMAGE_FORMATS.values():
        raise RequestRejected(
            "Invalid MIME type. Only image types are supported.", param, "invalid_image_format"
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(expected + "invalid base64 data.", param, "invalid_value") from None
    found = sniff_image_format(data)
    if found is None:
        raise RequestRejected(
            "You uploaded an unsupported image. Please make sure your image has of one the "
            "following formats: ['png', 'jpeg', 'gif', 'webp'].",
            param,
            "invalid_image_format",
        )
    if IMAGE_FORMATS[found] != mime:
        raise RequestRejected(
            f"Invalid '{param}': the data URL declares {mime} but the bytes are a {found} image.",
            param,
            "invalid_image_format",
        )


def _check_part(part: Any, role: str, param: str) -> None:
    if not isinstance(part, dict):
        raise _wrong_type(param, "an object", part)
    if "type" not in part:
        raise _missing(f"{param}.type")
    kind = part["type"]
    if kind not in PART_TYPES[role]:
        raise _invalid_value(kind, f"{param}.type", PART_TYPES[role])
    if kind in ("text", "refusal"):
        if kind not in part:
            raise _missing(f"{param}.{kind}")
        if not isinstance(part[kind], str):
            raise _wrong_type(f"{param}.{kind}", "a string", part[kind])
    elif kind == "image_url":
        image = part.get("image_url")
        if image is None:
            raise _missing(f"{param}.image_url")
        if not isinstance(image, dict):
            raise _wrong_type(f"{param}.image_url", "an object", image)
        if "url" not in image:
            raise _missing(f"{param}.image_url.url")
        _check_image_url(image["url"], f"{param}.image_url.url")
        detail = image.get("detail", "auto")
        if detail not in IMAGE_DETAILS:
            raise _invalid_value(detail, f"{param}.image_url.detail", IMAGE_DETAILS)


def _check_message(message: Any, index: int) -> None:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise _wrong_type(param, "an object", message)
    if "role" not in message:
        raise _missing(f"{param}.role")
    role = message["role"]
    if role not in ROLES:
        raise _invalid_value(role, f"{param}.role", ROLES)
    content = message.get("content")
    if content is None:
        # An assistant turn may carry only tool calls; every other role needs content.
        if role == "assistant" and message.get("tool_calls"):
            return
        raise _missing(f"{param}.content")
    if role == "tool" and "tool_call_id" not in message:
        raise _missing(f"{param}.tool_call_id")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _wrong_type(f"{param}.content", "one of a string or array of objects", content)
    if not content:
        raise RequestRejected(
            f"Invalid '{param}.content': empty array. Expected an array with minimum length 1, "
            "but got an empty array instead.",
            f"{param}.content",
            "empty_array",
        )
    for number, part in enumerate(content):
        _check_part(part, role, f"{param}.content[{number}]")


def _schema_error(name: str, context: tuple, problem: str) -> RequestRejected:
    return RequestRejected(
        f"Invalid schema for response_format '{name}': In context={context!r}, {problem}",
        "response_format",
        None,
    )


def _resolve_ref(root: dict, ref: str) -> Any:
    if ref == "#":
        return root
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for key in ref[2:].split("/"):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def check_strict_schema(schema: Any, name: str) -> None:
    """Raise :class:`RequestRejected` unless ``schema`` is in the strict structured-output
    subset."""
    if not isinstance(schema, dict) or schema.get("type") != "object" or "anyOf" in schema:
        got = (
            schema.get("type", "anyOf" if "anyOf" in schema else None)
            if isinstance(schema, dict)
            else None
        )
        raise RequestRejected(
            f"Invalid schema for response_format '{name}': schema must be a JSON Schema of "
            f"'type: \"object\"', got 'type: \"{got}\"'.",
            "response_format",
            None,
        )

    def visit(node: Any, context: tuple, depth: int) -> None:
        if not isinstance(node, dict):
            raise _schema_error(name, context, "a schema must be an object.")
        for keyword in node:
            if keyword not in STRICT_SCHEMA_KEYWORDS:
                raise _schema_error(name, context, f"'{keyword}' is not permitted.")
        if "$ref" in node and _resolve_ref(schema, node["$ref"]) is None:
            raise _schema_error(name, context, f"reference '{node['$ref']}' can't be resolved.")
        types = node.get("type")
        types = types if isinstance(types, list) else [types]
        if "object" in types:
            if depth > STRICT_MAX_NESTING:
                raise _schema_error(
                    name, context, f"the schema exceeds {STRICT_MAX_NESTING} levels of nesting."
                )
            if node.get("additionalProperties") is not False:
                raise _schema_error(
                    name,
                    context,
                    "'additionalProperties' is required to be supplied and to be false.",
                )
            properties = node.get("properties", {})
            required = node.get("required")
            missing = [
                key for key in properties if not isinstance(required, list) or key not in required
            ]
            if missing:
                raise _schema_error(
                    name,
                    context,
                    "'required' is required to be supplied and to be an array including every "
                    f"key in properties. Missing '{missing[0]}'.",
                )
            extra = [key for key in required or [] if key not in properties]
            if extra:
                raise _schema_error(
                    name, context, f"'required' names '{extra[0]}', which is not in properties."
                )
            for key, child in properties.items():
                visit(child, (*context, "properties", key), depth + 1)
        if "items" in node:
            visit(node["items"], (*context, "items"), depth)
        for number, child in enumerate(node.get("anyOf", [])):
            visit(child, (*context, "anyOf", number), depth)
        for defs in ("$defs", "definitions"):
            for key, child in node.get(defs, {}).items():
                visit(child, (*context, defs, key), depth)

    visit(schema, (), 1)


def _mentions_json(messages: list) -> bool:
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"type": "text", "text": content or ""}]
        if any("json" in str(part.get("text", "")).lower() for part in parts):
            return True
    return False


def _check_response_format(body: dict) -> None:
    response_format = body.get("response_format")
    if response_format is None:
        return
    if not isinstance(response_format, dict):
        raise _wrong_type("response_format", "an object", response_format)
    kind = response_format.get("type")
    if kind is None:
        raise _missing("response_format.type")
    if kind not in ("text", "json_object", "json_schema"):
        raise _invalid_value(kind, "response_format.type", ("text", "json_object", "json_schema"))
    if kind == "json_object" and not _mentions_json(body["messages"]):
        raise RequestRejected(
            "'messages' must contain the word 'json' in some form, to use 'response_format' of "
            "type 'json_object'.",
            "messages",
            None,
        )
    if kind != "json_schema":
        return
    spec = response_format.get("json_schema")
    if spec is None:
        raise _missing("response_format.json_schema")
    if not isinstance(spec, dict):
        raise _wrong_type("response_format.json_schema", "an object", spec)
    name = spec.get("name")
    if name is None:
        raise _missing("response_format.json_schema.name")
    if not isinstance(name, str) or not _SCHEMA_NAME.match(name):
        raise RequestRejected(
            "Invalid 'response_format.json_schema.name': string does not match pattern. Expected "
            "a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
            "response_format.json_schema.name",
            "invalid_value",
        )
    if len(name) > 64:
        raise RequestRejected(
            "Invalid 'response_format.json_schema.name': string too long. Expected a string with "
            f"maximum length 64, but got a string with length {len(name)} instead.",
            "response_format.json_schema.name",
            "string_above_max_length",
        )
    if spec.get("strict"):
        check_strict_schema(spec.get("schema"), name)


def _check_model_rules(body: dict, model: str) -> None:
    if _OPENAI_MODEL.match(model):
        for key in body:
            if key not in CHAT_PARAMETERS:
                raise RequestRejected(f"Unrecognized request argument supplied: {key}")
    if _REASONING_MODEL.match(model):
        if "max_tokens" in body:
            raise RequestRejected(
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                "'max_completion_tokens' instead.",
                "max_tokens",
                "unsupported_parameter",
            )
        for name in ("temperature", "top_p"):
            if body.get(name, 1) != 1:
                raise RequestRejected(
                    f"Unsupported value: '{name}' does not support {body[name]} with this model. "
                    "Only the default (1) value is supported.",
                    name,
                    "unsupported_value",
                )
        for name in _REASONING_UNSUPPORTED:
            if name in body:
                raise RequestRejected(
                    f"Unsupported parameter: '{name}' is not supported with this model.",
                    name,
                    "unsupported_parameter",
                )
        effort = body.get("reasoning_effort")
        if effort is not None and effort not in REASONING_EFFORTS:
            raise _invalid_value(effort, "reasoning_effort", REASONING_EFFORTS)
    elif _OPENAI_MODEL.match(model) and "reasoning_effort" in body:
        raise RequestRejected(
            "Unsupported parameter: 'reasoning_effort' is not supported with this model.",
            "reasoning_effort",
            "unsupported_parameter",
        )


def check_chat_request(body: Any) -> None:
    """Raise :class:`RequestRejected` (HTTP 400, the API's message) for a malformed request."""
    if not isinstance(body, dict):
        raise RequestRejected(_UNPARSABLE_BODY)
    model = body.get("model")
    if not model:
        raise RequestRejected("you must provide a model parameter")
    if not isinstance(model, str):
        raise _wrong_type("model", "a string", model)
    if "messages" not in body:
        raise _missing("messages")
    messages = body["messages"]
    if not isinstance(messages, list):
        raise _wrong_type("messages", "an array of objects", messages)
    if not messages:
        raise RequestRejected(
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an "
            "empty array instead.",
            "messages",
            "empty_array",
        )
    for index, message in enumerate(messages):
        _check_message(message, index)
    _check_number(body, "temperature", 0, 2, integer=False)
    _check_number(body, "top_p", 0, 1, integer=False)
    _check_number(body, "max_completion_tokens", 1, None, integer=True)
    _check_number(body, "max_tokens", 1, None, integer=True)
    _check_number(body, "n", 1, 128, integer=True)
    if "seed" in body and body["seed"] is not None:
        seed = body["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise _wrong_type("seed", "an integer", seed)
    _check_model_rules(body, model)
    _check_response_format(body)


class LoopbackServer:
    """Run with ``with LoopbackServer(responder) as server: ... server.base_url ...``.

    ``requests`` lists the chat-completion bodies received (batch lines included, refused ones
    too), ``rejections`` the ``(body, error object)`` of each refused one, ``max_in_flight`` the
    most chat requests handled at once, ``authorization`` the last ``Authorization`` header seen.
    A batch completes after ``batch_polls`` status polls.
    """

    def __init__(self, responder: Responder | None = None, batch_polls: int = 1):
        self.responder = responder or well_formed_reply
        self.batch_polls = batch_polls
        self.requests: list[dict] = []
        self.rejections: list[tuple[dict, dict]] = []
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.max_in_flight = 0
        self.authorization: str | None = None
        self._in_flight = 0
        self._seen: Counter = Counter()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self, port: int = 0) -> LoopbackServer:
        handler = type("Handler", (_Handler,), {"loopback": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------ chat

    def _reply_for(self, body: dict) -> Reply:
        with self._lock:
            self.requests.append(body)
            key = _messages_key(body)
            seen = self._seen[key]
            self._seen[key] += 1
        return self.responder(body, seen)

    def chat(self, body: dict) -> tuple[int, dict, dict[str, str]]:
        try:
            check_chat_request(body)
        except RequestRejected as rejected:
            with self._lock:
                self.requests.append(body)
                self.rejections.append((body, rejected.error_body()))
            return rejected.status, rejected.error_body(), {}
        reply = self._reply_for(body)
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if reply.delay_s:
                time.sleep(reply.delay_s)
        finally:
            with self._lock:
                self._in_flight -= 1
        if reply.status != 200:
            return reply.status, _error_body(reply.status), reply.headers
        return 200, _chat_completion(body, reply, self._ids), reply.headers

    # ------------------------------------------------------------ files and batches

    def add_file(self, data: bytes, purpose: str, filename: str) -> dict:
        file_id = f"file-{next(self._ids)}"
        record = {
            "id": file_id,
            "object": "file",
            "bytes": len(data),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
        }
        self.files[file_id] = {"meta": record, "data": data}
        return record

    def create_batch(self, request: dict) -> dict:
        """A new batch in ``validating``; raises :class:`RequestRejected` for a bad request."""
        for name in ("input_file_id", "endpoint", "completion_window"):
            if name not in request:
                raise _missing(name)
        if request["endpoint"] not in BATCH_ENDPOINTS:
            raise _invalid_value(request["endpoint"], "endpoint", BATCH_ENDPOINTS)
        if request["completion_window"] != "24h":
            raise _invalid_value(request["completion_window"], "completion_window", ("24h",))
        stored = self.files.get(request["input_file_id"])
        if stored is None or stored["meta"]["purpose"] != "batch":
            raise RequestRejected(
                f"Invalid 'input_file_id': '{request['input_file_id']}' is not a file uploaded "
                "with purpose 'batch'.",
                "input_file_id",
                "invalid_value",
            )
        batch_id = f"batch_{next(self._ids)}"
        batch = {
            "id": batch_id,
            "object": "batch",
            "endpoint": request["endpoint"],
            "input_file_id": request["input_file_id"],
            "completion_window": request["completion_window"],
            "status": "validating",
            "created_at": int(time.time()),
            "metadata": request.get("metadata"),
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
        }
        self.batches[batch_id] = {"batch": batch, "polls": 0}
        return batch

    def poll_batch(self, batch_id: str) -> dict:
        state = self.batches[batch_id]
        state["polls"] += 1
        batch = state["batch"]
        if batch["status"] == "validating":
            errors = self._batch_input_errors(batch)
            if errors:
                batch.update(
                    status="failed",
                    failed_at=int(time.time()),
                    errors={"object": "list", "data": errors},
                )
            else:
                batch["status"] = "in_progress"
        elif batch["status"] == "in_progress" and state["polls"] > self.batch_polls:
            self._run_batch(batch)
        return batch

    def _batch_input_errors(self, batch: dict) -> list[dict]:
        """The input-file problems that make a batch fail validation (one per bad line)."""
        errors: list[dict] = []
        ids: set[str] = set()
        lines = self.files[batch["input_file_id"]]["data"].decode("utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            try:
                request = json.loads(line)
            except ValueError:
                request = None
            if not isinstance(request, dict):
                problem = ("invalid_json_line", "This line is not parseable as valid JSON.")
            elif not isinstance(request.get("custom_id"), str):
                problem = ("missing_required_parameter", "Missing required parameter: 'custom_id'.")
            elif request["custom_id"] in ids:
                problem = (
                    "duplicate_custom_id",
                    "The custom_id for this request is a duplicate of another request. The "
                    "custom_id parameter must be unique for each request in a batch.",
                )
            elif request.get("method") != "POST":
                problem = ("invalid_value", "The method of every request must be 'POST'.")
            elif request.get("url") != batch["endpoint"]:
                problem = (
                    "mismatched_endpoint",
                    f"The url of this request ({request.get('url')!r}) does not match the "
                    f"batch endpoint {batch['endpoint']!r}.",
                )
            elif not isinstance(request.get("body"), dict):
                problem = ("missing_required_parameter", "Missing required parameter: 'body'.")
            else:
                ids.add(request["custom_id"])
                continue
            errors.append(
                {"code": problem[0], "message": problem[1], "param": None, "line": number}
            )
        return errors

    def _run_batch(self, batch: dict) -> None:
        lines = self.files[batch["input_file_id"]]["data"].decode("utf-8").splitlines()
        outputs, errors = [], []
        for number, line in enumerate(lines):
            request = json.loads(line)
            status, payload, _ = self.chat(request["body"])
            record = {
                "id": f"batch_req_{number}",
                "custom_id": request["custom_id"],
                "response": {"status_code": status, "request_id": f"req_{number}", "body": payload},
                "error": None,
            }
            (outputs if status == 200 else errors).append(json.dumps(record))
        batch["request_counts"] = {
            "total": len(lines),
            "completed": len(outputs),
            "failed": len(errors),
        }
        if outputs:
            batch["output_file_id"] = self.add_file(
                ("\n".join(outputs) + "\n").encode(), "batch_output", "output.jsonl"
            )["id"]
        if errors:
            batch["error_file_id"] = self.add_file(
                ("\n".join(errors) + "\n").encode(), "batch_output", "errors.jsonl"
            )["id"]
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    loopback: LoopbackServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            content_type = "application/octet-stream" if isinstance(payload, bytes) else None
            self.send_header("Content-Type", content_type or "application/json")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def do_POST(self) -> None:
        self.loopback.authorization = self.headers.get("Authorization")
        raw = self._read_body()
        path = self.path.split("?")[0]
        if path == "/v1/chat/completions":
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, RequestRejected(_UNPARSABLE_BODY).error_body())
                return
            status, payload, headers = self.loopback.chat(body)
            self._send(status, payload, headers)
        elif path == "/v1/files":
            fields = _multipart(self.headers.get("Content-Type", ""), raw)
            record = self.loopback.add_file(
                fields["file"][1], fields["purpose"][1].decode(), fields["file"][0] or "upload"
            )
            self._send(200, record)
        elif path == "/v1/batches":
            try:
                self._send(200, self.loopback.create_batch(json.loads(raw)))
            except RequestRejected as rejected:
                self._send(rejected.status, rejected.error_body())
        else:
            self._send(404, _error_body(404))

    def do_GET(self) -> None:
        self.loopback.authorization = self.headers.get("Authorization")
        parts = self.path.split("?")[0].strip("/").split("/")
        if parts[:2] == ["v1", "batches"] and len(parts) == 3 and parts[2] in self.loopback.batches:
            self._send(200, self.loopback.poll_batch(parts[2]))
        elif parts[:2] == ["v1", "files"] and len(parts) >= 3 and parts[2] in self.loopback.files:
            stored = self.loopback.files[parts[2]]
            self._send(200, stored["data"] if parts[-1] == "content" else stored["meta"])
        else:
            self._send(404, _error_body(404))


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """``name -> (filename, bytes)`` of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def serve_forever(port: int, latency_s: float = 0.0) -> None:
    """``llm loopback-server``: answer every request with a well-formed answer (after ``latency_s``)
    until interrupted."""

    def respond(body: dict, seen: int) -> Reply:
        return Reply(well_formed_reply(body, seen).content, delay_s=latency_s)

    server = LoopbackServer(respond).start(port)
    print(f"loopback OpenAI server on {server.base_url} (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
