"""The request path without a server: the exact request body, what the openai SDK sends over HTTP
for it (the SDK is the referee for the split between named parameters and ``extra_body``), the
client options, Retry-After parsing and the retry loop's exact outcome."""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter

import httpx2 as httpx
import openai
import pytest
from llm_fixtures import make_config

from llm import backend
from llm.backend import (
    FatalBackendError,
    MissingApiKeyError,
    TransportFailure,
    api_key,
    chat_request_body,
    make_async_client,
    make_client,
    send_chat,
)
from llm.schema import response_format

MESSAGES = [{"role": "user", "content": "describe the car"}]
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 0,
    "model": "teacher",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "{}"},
            "finish_reason": "stop",
        }
    ],
}


def _sdk_client(answers: list[tuple[int, dict]], sent: list[dict]) -> openai.AsyncOpenAI:
    """An SDK client whose transport records each JSON body and answers ``(status, headers)``
    in turn (200: a chat completion; otherwise the API's error object)."""

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content))
        status, headers = answers[len(sent) - 1]
        message = headers.get("x-message", f"status {status}")
        body = COMPLETION if status == 200 else {"error": {"message": message}}
        return httpx.Response(status, headers=headers, json=body)

    transport = httpx.MockTransport(handle)
    return openai.AsyncOpenAI(
        api_key="k",
        base_url="http://server/v1",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport),
    )


async def _no_sleep(delay: float) -> None:
    return None


def test_the_body_holds_the_set_sampling_fields_and_the_sample_seed():
    config = make_config(
        "http://server/v1",
        sampling={"temperature": 0.7, "top_p": 0.9, "seed": 10, "extra_body": {"top_k": 5}},
    )
    body = chat_request_body(config, MESSAGES, 2, sample_index=3)
    assert body == {
        "model": "teacher",
        "messages": MESSAGES,
        "temperature": 0.7,
        "top_p": 0.9,
        "max_completion_tokens": 4096,
        "seed": 13,
        "response_format": response_format(2, config.validation, True),
        "top_k": 5,
    }
    # Unset fields are not sent; no seed stays no seed; "none" sends no response_format.
    plain = make_config(
        "http://server/v1",
        backend={"structured_output": "none", "schema_array_bounds": False},
        sampling={"seed": None, "max_completion_tokens": None, "max_tokens": 300,
                  "reasoning_effort": "low"},
    )  # fmt: skip
    assert chat_request_body(plain, MESSAGES, 2, 1) == {
        "model": "teacher",
        "messages": MESSAGES,
        "max_tokens": 300,
        "reasoning_effort": "low",
    }
    unbounded = make_config("http://server/v1", backend={"schema_array_bounds": False})
    assert chat_request_body(unbounded, MESSAGES, 2, 0)["response_format"] == response_format(
        2, unbounded.validation, False
    )


def test_the_sdk_sends_exactly_the_body_and_the_answer_comes_back():
    config = make_config(
        "http://server/v1",
        sampling={"temperature": 0.5, "seed": 1, "extra_body": {"top_k": 5, "min_p": 0.1}},
    )
    body = chat_request_body(config, MESSAGES, 1, 0)
    sent: list[dict] = []
    client = _sdk_client([(200, {})], sent)
    answer = asyncio.run(send_chat(client, body, config, random.Random(0)))
    assert sent == [body]
    assert answer.choices[0].message.content == "{}"
    # Without server-specific fields the SDK gets no extra_body at all.
    sent.clear()
    plain = chat_request_body(make_config("http://server/v1"), MESSAGES, 1, 0)
    asyncio.run(send_chat(_sdk_client([(200, {})], sent), plain, config, random.Random(0)))
    assert sent == [plain]


def test_retries_record_every_error_and_wait_as_told(monkeypatch):
    waits: list[float] = []

    async def no_sleep(delay):
        waits.append(delay)

    monkeypatch.setattr(asyncio, "sleep", no_sleep)
    config = make_config(
        "http://server/v1",
        queue={"max_transport_retries": 3, "backoff_initial_s": 0.5, "backoff_max_s": 2.0},
    )
    body = chat_request_body(config, MESSAGES, 1, 0)
    answers = [
        (429, {"retry-after-ms": "1500"}),  # hint above the jittered delay: waited
        (503, {"retry-after": "9"}),  # hint above backoff_max_s: capped
        (500, {"retry-after": "soon"}),  # unreadable hint: the jittered delay
        (200, {}),
    ]
    sent: list[dict] = []
    errors: Counter = Counter()
    rng, referee = random.Random(4), random.Random(4)
    asyncio.run(send_chat(_sdk_client(answers, sent), body, config, rng, errors))
    assert len(sent) == 4 and errors == Counter(rate_limited=1, server_error=2)
    first = referee.uniform(0.0, 0.5)
    referee.uniform(0.0, 1.0)
    third = referee.uniform(0.0, 2.0)
    assert waits == [max(first, 1.5), 2.0, third]


def test_the_last_failure_and_the_final_ones_are_reported_exactly(monkeypatch):
    monkeypatch.setattr(asyncio, "sleep", _no_sleep)
    config = make_config("http://server/v1", queue={"max_transport_retries": 1})
    body = chat_request_body(config, MESSAGES, 1, 0)
    errors: Counter = Counter()
    sent: list[dict] = []
    client = _sdk_client([(502, {}), (502, {})], sent)
    with pytest.raises(TransportFailure) as failure:
        asyncio.run(send_chat(client, body, config, random.Random(0), errors))
    assert (failure.value.reason, failure.value.retries) == ("server_error", 1)
    assert str(failure.value).startswith("server_error after 1 retries: Error code: 502")
    assert len(sent) == 2 and errors == Counter(server_error=2)
    # A final 4xx: no retry, counted once, without a Counter too.
    sent.clear()
    with pytest.raises(TransportFailure) as failure:
        asyncio.run(send_chat(_sdk_client([(400, {})], sent), body, config, random.Random(0)))
    assert (failure.value.reason, failure.value.retries, len(sent)) == ("http_400", 0, 1)
    # The detail keeps the first 300 characters of a long error.
    with pytest.raises(TransportFailure) as failure:
        answer = [(413, {"x-message": "y" * 400})]
        asyncio.run(send_chat(_sdk_client(answer, []), body, config, random.Random(0)))
    assert failure.value.detail == ("Error code: 413 - " + "y" * 400)[:300]
    # 401: the run stops, naming the server and the model.
    errors.clear()
    with pytest.raises(FatalBackendError) as fatal:
        asyncio.run(send_chat(_sdk_client([(401, {})], []), body, config, random.Random(0), errors))
    assert str(fatal.value) == (
        "http://server/v1 answered HTTP 401 for model 'teacher': Error code: 401 - status 401"
    )
    assert errors == Counter(http_401=1)
    openai_config = make_config(None)
    with pytest.raises(FatalBackendError, match="^OpenAI answered HTTP 404 for model 'teacher'"):
        asyncio.run(send_chat(_sdk_client([(404, {})], []), body, openai_config, random.Random(0)))


def test_clients_never_retry_on_their_own(monkeypatch):
    monkeypatch.setenv("LLM_TEST_KEY", "  sk-local  ")
    config = make_config("http://server:8000/v1", backend={"timeout_s": 7.5})
    for client in (make_client(config.backend), make_async_client(config.backend)):
        assert client.max_retries == 0 and client.timeout == 7.5
        assert client.api_key == "sk-local" and str(client.base_url) == "http://server:8000/v1/"


@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_key_names_the_variable_and_the_server(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("LLM_TEST_KEY", raising=False)
    else:
        monkeypatch.setenv("LLM_TEST_KEY", value)
    with pytest.raises(MissingApiKeyError) as missing:
        api_key(make_config("http://server/v1").backend)
    assert str(missing.value) == (
        "no API key: set the environment variable LLM_TEST_KEY (named by backend.api_key_env) "
        "for http://server/v1; local servers that ignore keys accept any value, "
        "e.g. LLM_TEST_KEY=local"
    )
    with pytest.raises(MissingApiKeyError, match=r"for the OpenAI API; "):
        api_key(make_config(None).backend)


def test_retry_after_headers():
    def error(headers):
        request = httpx.Request("POST", "http://server/v1/chat/completions")
        response = httpx.Response(429, headers=headers, request=request, json={})
        return openai.APIStatusError("error", response=response, body={})

    parse = backend._retry_after_s
    assert parse(error({"retry-after-ms": "250", "retry-after": "9"})) == 0.25
    assert parse(error({"retry-after": "2"})) == 2.0
    assert parse(error({"retry-after": "-3"})) == 0.0
    assert parse(error({"retry-after": "Wed, 21 Oct 2026 07:28:00 GMT"})) is None
    assert parse(error({})) is None
    assert parse(KeyError("no response")) is None
