"""The response cache's documented contract: the key recipe (so caches of earlier runs stay valid),
torn or foreign entries count as misses, and one unreadable entry never hides the others."""

from __future__ import annotations

import hashlib
import json
import locale
import sys
import time
import warnings

import pytest

from llm.cache import ResponseCache, request_key

BODY = {"model": "o3", "messages": [{"role": "user", "content": "café"}], "seed": 3}


def _sha256(keyed: dict) -> str:
    text = json.dumps(keyed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_the_key_is_the_sha256_of_the_canonical_request():
    assert request_key(BODY, None) == _sha256({"base_url": "openai", "body": BODY})
    assert request_key(BODY, "http://h/v1") == _sha256({"base_url": "http://h/v1", "body": BODY})
    assert request_key(BODY, None, sample=2) == request_key(
        BODY, None
    )  # the seed tells samples apart
    unseeded = {key: value for key, value in BODY.items() if key != "seed"}
    assert request_key(unseeded, None) == _sha256({"base_url": "openai", "body": unseeded})
    assert request_key(unseeded, None, sample=2) == _sha256(
        {"base_url": "openai", "body": unseeded, "sample": 2}
    )


def test_torn_and_foreign_entries_are_misses_and_do_not_hide_others(tmp_path):
    cache = ResponseCache(tmp_path)
    # Sorted as entries() walks them: the torn one comes first.
    keys = sorted(request_key({**BODY, "seed": seed}, None) for seed in range(3))
    for key in keys:
        cache.put(key, {"id": key[:6], "text": "café"}, "api")
    stored = json.loads((tmp_path / keys[0][:2] / f"{keys[0]}.json").read_text(encoding="utf-8"))
    assert stored["response"]["text"] == "café" and stored["origin"] == "api"
    torn = tmp_path / keys[0][:2] / f"{keys[0]}.json"
    torn.write_text(torn.read_text()[:20])
    foreign = tmp_path / keys[1][:2] / f"{keys[1]}.json"
    foreign.write_text(json.dumps({"key": "other", "response": {}}))
    with pytest.warns(UserWarning, match="ignoring unreadable cache entry"):
        assert cache.get(keys[0]) is None
    with pytest.warns(UserWarning, match=r"\.json: wrong key or no response$"):
        assert cache.get(keys[1]) is None
    assert cache.get(keys[2])["response"]["id"] == keys[2][:6]
    assert keys[2] in cache and request_key({**BODY, "seed": 9}, None) not in cache
    readable = [entry["key"] for entry in cache.entries()]
    assert keys[2] in readable and keys[0] not in readable
    cache.put(keys[0], {"id": "again"}, "batch")  # a torn entry is simply overwritten
    assert cache.get(keys[0])["origin"] == "batch"


def test_entries_are_utf8_json_that_shows_the_answer_text(tmp_path):
    # The cache is the record of what was paid for: `grep`/`jq` on it must find the answer as
    # written (non-Latin answers would also triple in size as \uXXXX escapes).
    key = request_key(BODY, None)
    before = time.time()
    ResponseCache(tmp_path).put(key, {"text": "café 東京"}, "api")
    raw = (tmp_path / key[:2] / f"{key}.json").read_bytes()
    assert "café 東京".encode() in raw
    entry = json.loads(raw.decode("utf-8"))
    assert sorted(entry) == ["created", "key", "origin", "response"]
    assert (entry["key"], entry["origin"], entry["response"]) == (key, "api", {"text": "café 東京"})
    assert before <= entry["created"] <= time.time()


@pytest.fixture
def ascii_locale():
    """The C locale for text files opened without an encoding (as under ``LC_ALL=C``)."""
    if sys.flags.utf8_mode:
        pytest.skip("Python's UTF-8 mode ignores the locale")
    previous = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, previous)


def test_entries_read_back_under_a_non_utf8_locale(tmp_path, ascii_locale):
    # A run under LC_ALL=C (cron jobs, minimal containers) must read the UTF-8 entries that
    # another run wrote, not drop them as unreadable and pay for them again.
    key = request_key(BODY, None)
    cache = ResponseCache(tmp_path)
    cache.put(key, {"text": "café"}, "api")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cache.get(key)["response"] == {"text": "café"}
        assert [entry["key"] for entry in cache.entries()] == [key]
