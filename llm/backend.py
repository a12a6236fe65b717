"""OpenAI SDK clients for any OpenAI-compatible server, request bodies and retry with backoff.

The server is chosen by ``backend.base_url`` + ``backend.model`` (OpenAI, vLLM, ``transformers
serve``, ...). The key comes only from the environment variable named by ``backend.api_key_env``
and is never logged or written anywhere. The SDK's own retries are off (``max_retries=0``): this
module retries 429, 5xx, timeouts and dropped connections with capped exponential backoff and full
jitter, honouring ``Retry-After``; other HTTP errors are final.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

from llm.config import BackendConfig, EnhanceConfig
from llm.schema import response_format

# Parameters `chat.completions.create` takes by name; everything else goes in `extra_body`.
_CHAT_PARAMS = {
    "model",
    "messages",
    "temperature",
    "top_p",
    "seed",
    "max_completion_tokens",
    "max_tokens",
    "response_format",
    "reasoning_effort",
}
_RETRY_STATUS = {408, 409, 425, 429}
# Errors that will hit every request the same way: stop the run instead of failing each target.
_FATAL_STATUS = {401, 403, 404}


class MissingApiKeyError(RuntimeError):
    """The environment variable that should hold the API key is unset or empty."""


class FatalBackendError(RuntimeError):
    """The server refuses every request (bad key, unknown model, unreachable): the run stops."""


@dataclass
class TransportFailure(Exception):
    """A request that got no usable HTTP answer after all retries. ``reason`` is a short code."""

    reason: str
    detail: str
    retries: int

    def __str__(self) -> str:
        return f"{self.reason} after {self.retries} retries: {self.detail}"


def api_key(backend: BackendConfig) -> str:
    """The key from ``$<backend.api_key_env>``; raise before any work when it is missing."""
    value = os.environ.get(backend.api_key_env, "").strip()
    if not value:
        target = backend.base_url or "the OpenAI API"
        raise MissingApiKeyError(
            f"no API key: set the environment variable {backend.api_key_env} (named by "
            f"backend.api_key_env) for {target}; local servers that ignore keys accept any value, "
            f"e.g. {backend.api_key_env}=local"
        )
    return value


def _client_options(backend: BackendConfig) -> dict:
    # Retries are ours (llm.enhance backs off and resamples), so the SDK must not retry on its own.
    return dict(
        api_key=api_key(backend),
        base_url=backend.base_url,
        timeout=backend.timeout_s,
        max_retries=0,
    )


def make_async_client(backend: BackendConfig):
    from openai import AsyncOpenAI

    return AsyncOpenAI(**_client_options(backend))


def make_client(backend: BackendConfig):
    from openai import OpenAI

    return OpenAI(**_client_options(backend))


def chat_request_body(
    config: EnhanceConfig, messages: list[dict], num_originals: int, sample_index: int
) -> dict[str, Any]:
    """The exact JSON body of one chat-completions request (also a Batch API line's ``body``)."""
    sampling = config.sampling
    body: dict[str, Any] = {"model": config.backend.model, "messages": messages}
    optional = {
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_completion_tokens": sampling.max_completion_tokens,
        "max_tokens": sampling.max_tokens,
        "reasoning_effort": sampling.reasoning_effort,
        "seed": None if sampling.seed is None else sampling.seed + sample_index,
    }
    body.update({key: value for key, value in optional.items() if value is not None})
    if config.backend.structured_output == "json_schema":
        body["response_format"] = response_format(
            num_originals, config.validation, config.backend.schema_array_bounds
        )
    body.update(sampling.extra_body)
    return body


def _retry_after_s(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


def classify_error(exc: Exception) -> tuple[str, bool]:
    """``(reason, retryable)`` for an exception raised by the SDK."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return "timeout", True
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error", True
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status == 429:
            return "rate_limited", True
        if status >= 500:
            return "server_error", True
        return f"http_{status}", status in _RETRY_STATUS
    raise exc


def backoff_delay(retry: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff: uniform in ``[0, min(max_s, initial_s * 2**retry)]``."""
    return rng.uniform(0.0, min(max_s, initial_s * (2**retry)))


async def send_chat(
    client,
    body: dict[str, Any],
    config: EnhanceConfig,
    rng: random.Random,
    errors: Counter | None = None,
):
    """Send one request through ``client.chat.completions.create`` with retries.

    Every transport error (retried or final) is counted by reason in ``errors``: a client-side
    ``timeout`` may still have been processed and billed by the server, so ``llm report`` counts
    them apart. Returns the SDK's ``ChatCompletion``. Raises :class:`TransportFailure` when
    retries run out or the error is final, and :class:`FatalBackendError` on 401/403/404.
    """
    import openai

    named = {key: value for key, value in body.items() if key in _CHAT_PARAMS}
    extra = {key: value for key, value in body.items() if key not in _CHAT_PARAMS}
    queue = config.queue
    retry = 0
    while True:
        try:
            return await client.chat.completions.create(**named, extra_body=extra or None)
        except (openai.APIStatusError, openai.APIConnectionError) as exc:
            reason, retryable = classify_error(exc)
            if errors is not None:
                errors[reason] += 1
            status = getattr(exc, "status_code", None)
            if status in _FATAL_STATUS:
                raise FatalBackendError(
                    f"{config.backend.base_url or 'OpenAI'} answered HTTP {status} for model "
                    f"{config.backend.model!r}: {exc.message}"
                ) from None
            if not retryable or retry >= queue.max_transport_retries:
                raise TransportFailure(reason, str(exc)[:300], retry) from None
            delay = backoff_delay(retry, queue.backoff_initial_s, queue.backoff_max_s, rng)
            hinted = _retry_after_s(exc)
            if hinted is not None:
                delay = min(max(delay, hinted), queue.backoff_max_s)
            retry += 1
            await asyncio.sleep(delay)
