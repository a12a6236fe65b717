"""Engine pieces: safe checkpoint loading and the config/runner plumbing behind ``tools/``."""

from aerialseg.engine.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    allow_checkpoint_globals,
    safe_torch_load,
)
from aerialseg.engine.launch import build_runner, load_config, train_main

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "allow_checkpoint_globals",
    "build_runner",
    "load_config",
    "safe_torch_load",
    "train_main",
]
