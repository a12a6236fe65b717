"""The response cache's documented contract: the key recipe (so caches of earlier runs stay valid),
torn or foreign entries count as misses, and one unreadable entry never hides the others."""

from __future__ import annotations

import hashlib
import json

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
    with pytest.warns(UserWarning, match="wrong key or no response"):
        assert cache.get(keys[1]) is None
    assert cache.get(keys[2])["response"]["id"] == keys[2][:6]
    readable = [entry["key"] for entry in cache.entries()]
    assert keys[2] in readable and keys[0] not in readable
    cache.put(keys[0], {"id": "again"}, "batch")  # a torn entry is simply overwritten
    assert cache.get(keys[0])["origin"] == "batch"
