"""Fixtures of the llm tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from llm_fixtures import write_patch


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three patches (12 targets); returns the folder holding ``train/annotations``."""
    root = tmp_path / "aeriald"
    for index in range(3):
        write_patch(root, f"P{index:04d}_patch_000000", seed=index)
    return root


@pytest.fixture(autouse=True)
def _api_key(monkeypatch):
    monkeypatch.setenv("LLM_TEST_KEY", "sk-test-secret-value")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
