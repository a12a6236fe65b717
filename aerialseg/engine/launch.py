"""Config and runner plumbing shared by ``tools/train.py``, ``tools/test.py`` and the demo.

The command-line tools are thin shells over these functions, so that the flags behave exactly like
MMSegmentation's (``--work-dir``, ``--resume``, ``--amp``, ``--cfg-options``, ``--launcher``).
"""

from __future__ import annotations

import argparse
import logging
import os
import os.path as osp

from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")


def add_common_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags that ``train.py`` and ``test.py`` share, spelled as in mmseg's tools."""
    parser.add_argument("--work-dir", help="directory for logs, checkpoints and tables")
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        action=DictAction,
        help="override config entries, e.g. train_cfg.max_iters=100 "
        'optim_wrapper.optimizer.lr=1e-4 (lists as key="[a,b]")',
    )
    parser.add_argument("--launcher", choices=LAUNCHERS, default="none", help="job launcher")
    # torch.distributed.launch passes --local-rank; torchrun sets LOCAL_RANK instead.
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return parser


def load_config(
    config: str,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
    launcher: str = "none",
) -> Config:
    """Read a config file and apply the command-line overrides.

    The work dir is chosen as mmseg does: ``--work-dir`` > ``work_dir`` in the file >
    ``work_dirs/<config name>``.
    """
    if not osp.isfile(config):
        raise FileNotFoundError(f"config file not found: '{config}'")
    cfg = Config.fromfile(config)
    cfg.launcher = launcher
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(config))[0])
    return cfg


def enable_amp(cfg: Config) -> None:
    """Switch an ``OptimWrapper`` config to mmengine's ``AmpOptimWrapper`` (dynamic loss scale).

    mmengine's ``AmpOptimWrapper`` only runs on an accelerator, so on a CPU-only machine this fails
    here, before any model or data is built, rather than deep inside the runner.
    """
    from mmengine.device import get_device

    if get_device() == "cpu":
        raise RuntimeError(
            "--amp needs a GPU (or NPU/MLU/MUSA): mmengine's AmpOptimWrapper does not run on CPU, "
            "and no accelerator is visible here. Drop --amp to train in fp32 on CPU."
        )
    wrapper = cfg.optim_wrapper.get("type", "OptimWrapper")
    if wrapper == "AmpOptimWrapper":
        print_log("AMP is already enabled in the config.", logger="current", level=logging.WARNING)
        return
    if wrapper != "OptimWrapper":
        raise ValueError(
            f"--amp needs optim_wrapper.type='OptimWrapper', the config has '{wrapper}'"
        )
    cfg.optim_wrapper.type = "AmpOptimWrapper"
    cfg.optim_wrapper.setdefault("loss_scale", "dynamic")


def apply_resume(cfg: Config, resume: str | None) -> None:
    """``--resume`` alone resumes from the work dir's latest checkpoint; with a path, from it."""
    if resume is None:
        return
    if resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    else:
        if not osp.isfile(resume):
            raise FileNotFoundError(f"--resume checkpoint not found: '{resume}'")
        cfg.resume = True
        cfg.load_from = resume


def prepare_cpu_distributed(cfg: Config) -> None:
    """Let ``--launcher pytorch`` (torchrun) train on machines without a GPU.

    mmengine's launcher calls ``torch.cuda.set_device`` before it creates the process group, which
    fails without CUDA. A gloo group created here first is reused by the runner, and DDP wraps the
    CPU modules without device ids.
    """
    import torch
    import torch.distributed as dist

    if cfg.launcher != "pytorch" or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
    wrapper = cfg.get("model_wrapper_cfg") or dict(type="MMDistributedDataParallel")
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def build_runner(cfg: Config):
    """Build a ``Runner``, or the config's ``runner_type`` (``FlexibleRunner``: DeepSpeed, FSDP)."""
    if "runner_type" not in cfg:
        return Runner.from_cfg(cfg)
    from mmseg.registry import RUNNERS

    return RUNNERS.build(cfg)


def set_local_rank(local_rank: int, launcher: str) -> None:
    """Expose ``--local-rank`` (from ``torch.distributed.launch``) as ``LOCAL_RANK`` for mmengine.

    Only for distributed launches: a ``LOCAL_RANK`` left in the environment of a single-process
    run makes other libraries in the same process (e.g. transformers' Trainer) think they are
    distributed.
    """
    if launcher != "none":
        os.environ.setdefault("LOCAL_RANK", str(local_rank))


def train_main(argv: list[str] | None = None):
    """Entry point of ``tools/train.py``; returns the runner after training."""
    parser = argparse.ArgumentParser(description="Train an AerialSeg/MMSeg model")
    parser.add_argument("config", help="train config file path")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from the latest checkpoint in the work dir, or from the given checkpoint",
    )
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision training")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank, args.launcher)

    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    if args.amp:
        enable_amp(cfg)
    apply_resume(cfg, args.resume)
    prepare_cpu_distributed(cfg)
    runner = build_runner(cfg)
    runner.train()
    return runner
