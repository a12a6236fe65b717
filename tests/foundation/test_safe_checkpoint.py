"""Safe checkpoints on torch >= 2.6: mmengine resume works, unsafe globals are refused."""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import aerialseg  # noqa: F401  (routes mmengine's local checkpoint loader through safe_torch_load)
from aerialseg.engine import (
    CheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
)

REPO = Path(__file__).resolve().parents[2]


class LineDataset(Dataset):
    """y = 3x - 1 with fixed inputs."""

    def __init__(self, size: int = 16):
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 1, generator=generator)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> dict:
        x = self.x[index]
        return dict(inputs=x, targets=3 * x - 1)


class LineModel(BaseModel):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)  # every run starts from the same weights
        self.linear = torch.nn.Linear(1, 1)

    def forward(self, inputs, targets=None, data_samples=None, mode="tensor"):
        prediction = self.linear(inputs)
        if mode == "loss":
            return dict(loss=torch.nn.functional.mse_loss(prediction, targets))
        return prediction


class RecordStateOnStart(Hook):
    """Captures what the runner holds right after load/resume, before any new iteration."""

    def __init__(self):
        self.seen: dict = {}

    def before_train(self, runner) -> None:
        optimizer = runner.optim_wrapper.optimizer
        first_param = next(iter(optimizer.state.values()))
        self.seen = dict(
            iter=runner.iter,
            exp_avg=first_param["exp_avg"].clone(),
            step=float(first_param["step"]),
            loss_count=len(runner.message_hub.get_scalar("train/loss").data[0]),
            lr=runner.message_hub.get_scalar("train/lr").current(),
        )


def make_runner(work_dir: Path, max_iters: int, resume: bool = False, hooks=()) -> Runner:
    return Runner(
        model=LineModel(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            dataset=LineDataset(),
            sampler=dict(type="DefaultSampler", shuffle=True),
            collate_fn=dict(type="default_collate"),
            batch_size=4,
            num_workers=0,
        ),
        optim_wrapper=dict(optimizer=dict(type="AdamW", lr=0.05)),
        param_scheduler=dict(type="LinearLR", start_factor=0.5, by_epoch=False, begin=0, end=6),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(
            checkpoint=dict(type="CheckpointHook", interval=4, by_epoch=False),
            logger=dict(type="LoggerHook", interval=1),
        ),
        custom_hooks=list(hooks),
        resume=resume,
        randomness=dict(seed=7),
        experiment_name=f"run-{max_iters}-{resume}",
        default_scope="mmengine",
    )


@pytest.mark.slow
def test_resume_continues_iteration_optimizer_and_message_hub(tmp_path):
    continuous = make_runner(tmp_path / "continuous", max_iters=8)
    continuous.train()
    expected_weights = copy.deepcopy(continuous.model.state_dict())

    interrupted = make_runner(tmp_path / "interrupted", max_iters=4)
    interrupted.train()
    saved = safe_torch_load(tmp_path / "interrupted" / "iter_4.pth")
    saved_exp_avg = next(iter(saved["optimizer"]["state"].values()))["exp_avg"]
    assert saved["meta"]["iter"] == 4

    recorder = RecordStateOnStart()
    resumed = make_runner(tmp_path / "interrupted", max_iters=8, resume=True, hooks=[recorder])
    resumed.train()

    assert recorder.seen["iter"] == 4
    assert recorder.seen["step"] == 4.0
    torch.testing.assert_close(recorder.seen["exp_avg"], saved_exp_avg)
    assert recorder.seen["loss_count"] == 4  # the message hub came back with its history
    assert resumed.iter == 8
    assert len(resumed.message_hub.get_scalar("train/loss").data[0]) == 8
    # Same seed, same data order: resuming at 4 ends exactly where the uninterrupted run ended.
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, expected_weights[name], msg=name)


class NotAllowListed:
    def __init__(self):
        self.payload = [1, 2, 3]


class RunsCodeOnLoad:
    """Pickles to a call of ``os.system``; loading it unsafely would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_non_allow_listed_global_is_refused_with_its_name(tmp_path):
    path = tmp_path / "custom.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "extra": NotAllowListed()}, path)

    with pytest.raises(UnsafeCheckpointError) as info:
        safe_torch_load(path)
    message = str(info.value)
    assert "NotAllowListed" in message
    assert str(path) in message
    assert "weights_only" not in message  # no advice to switch safety off


def test_code_execution_payload_is_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "meta": RunsCodeOnLoad(marker)}, path)

    model = LineModel()
    with pytest.raises(UnsafeCheckpointError, match="system"):
        load_checkpoint(model, str(path))  # mmengine's own loader goes through the allow-list
    assert not marker.exists()


def test_runner_resume_refuses_unsafe_checkpoint(tmp_path):
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    torch.save({"meta": {"iter": 1}, "state_dict": {}, "x": NotAllowListed()}, work_dir / "bad.pth")
    runner = make_runner(work_dir, max_iters=2)
    with pytest.raises(UnsafeCheckpointError, match="NotAllowListed"):
        runner.resume(str(work_dir / "bad.pth"))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_corrupt_checkpoint_gives_clear_error(tmp_path, content):
    path = tmp_path / "broken.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="broken.pth"):
        safe_torch_load(path)


def test_missing_checkpoint_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        safe_torch_load(tmp_path / "nowhere.pth")


def test_plain_state_dict_round_trip(tmp_path):
    path = tmp_path / "weights.pth"
    model = LineModel()
    torch.save(model.state_dict(), path)
    loaded = safe_torch_load(path)
    torch.testing.assert_close(loaded["linear.weight"], model.linear.weight)


def test_no_code_loads_checkpoints_with_weights_only_false():
    pattern = re.compile(r"weights_only\s*=\s*" + "False")  # split so this file does not match
    sources = [
        path
        for folder in ("aerialseg", "datagen", "llm", "tools", "benchmarks", "tests")
        for path in (REPO / folder).glob("**/*.py")
    ]
    assert sources, "no project sources found"

    def code(path) -> str:  # comments may name the flag (e.g. to explain this very check)
        return "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())

    offenders = [str(p.relative_to(REPO)) for p in sources if pattern.search(code(p))]
    assert offenders == [], f"checkpoint loading with weights_only switched off in {offenders}"
