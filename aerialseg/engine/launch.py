"""Config and runner plumbing shared by ``tools/train.py``, ``tools/test.py`` and the demo.

The command-line tools are thin shells over these functions, so that the flags behave exactly like
MMSegmentation's (``--work-dir``, ``--resume``, ``--amp``, ``--cfg-options``, ``--launcher``).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import gc
import logging
import os
import os.path as osp
from collections.abc import Mapping

import mmengine.config.config
from mmengine.config import Config, DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner

from aerialseg.engine.pretrained import (
    PretrainedFilesError,
    apply_resolved,
    resolve_pretrained_files,
)

LAUNCHERS = ("none", "pytorch", "slurm", "mpi")
# Top-level keys that mmengine's Runner (and this project's tools) read although a config may not
# set them: --cfg-options may add these; any other key absent from the config is a typo.
RUNNER_KEYS = frozenset(
    [
        "model",
        "work_dir",
        "train_dataloader",
        "val_dataloader",
        "test_dataloader",
        "train_cfg",
        "val_cfg",
        "test_cfg",
        "auto_scale_lr",
        "optim_wrapper",
        "param_scheduler",
        "val_evaluator",
        "test_evaluator",
        "default_hooks",
        "custom_hooks",
        "data_preprocessor",
        "load_from",
        "resume",
        "launcher",
        "env_cfg",
        "log_processor",
        "log_level",
        "visualizer",
        "default_scope",
        "randomness",
        "experiment_name",
        "compile",
        "model_wrapper_cfg",
        "runner_type",
        "strategy",
        "test_sets",
        "historic_test",
        "allow_val_test_overlap",  # read by aerialseg.datasets.split_check
    ]
)
DATALOADERS = ("train_dataloader", "val_dataloader", "test_dataloader")

_yapf_format_code = mmengine.config.config.FormatCode


@functools.lru_cache(maxsize=16)
def _format_config_text(text: str, style: tuple) -> tuple[str, bool]:
    return _yapf_format_code(text, style_config=dict(style))


def format_code_once(unformatted_source: str, style_config=None, **options) -> tuple[str, bool]:
    """yapf's ``FormatCode`` remembering its answers for mmengine's ``Config.pretty_text``.

    A runner formats the same config text with yapf when it logs it, dumps it and writes each
    checkpoint (~1 s of CPU each; a tiny training spends most of its time there). yapf is a pure
    function of the text and the style, so a repeated call returns the first answer.
    """
    if options or not isinstance(style_config, dict):
        return _yapf_format_code(unformatted_source, style_config=style_config, **options)
    return _format_config_text(unformatted_source, tuple(sorted(style_config.items())))


mmengine.config.config.FormatCode = format_code_once


class ConfigCheckError(ValueError):
    """A config cannot run as given: unknown override keys, or missing files (all listed)."""


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
        check_override_keys(cfg, cfg_options)
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("work_dirs", osp.splitext(osp.basename(config))[0])
    return cfg


def check_override_keys(cfg: Config, cfg_options: Mapping) -> None:
    """Refuse ``--cfg-options`` whose top-level key is neither in the config nor read by the
    runner (``trian_cfg.max_iters=10`` would otherwise be merged and silently ignored)."""
    unknown = sorted({key.split(".")[0] for key in cfg_options} - set(cfg.keys()) - RUNNER_KEYS)
    if not unknown:
        return
    known = sorted(set(cfg.keys()) | RUNNER_KEYS)
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    raise ConfigCheckError(
        f"--cfg-options: unknown top-level config key{'s' if len(unknown) > 1 else ''} "
        f"{', '.join(hints)}; the config has no such entry and the runner does not read it"
    )


def _dataset_roots(dataset: Mapping) -> list[str]:
    """Every ``data_root`` (joined with its ``ann_file`` when given) of a dataset config, looking
    inside wrapper datasets."""
    if not isinstance(dataset, Mapping):
        return []
    paths = []
    root = dataset.get("data_root")
    if isinstance(root, str) and root:
        ann_file = dataset.get("ann_file")
        paths.append(osp.join(root, ann_file) if isinstance(ann_file, str) and ann_file else root)
    for inner in dataset.get("datasets", None) or []:
        paths += _dataset_roots(inner)
    paths += _dataset_roots(dataset.get("dataset"))
    return paths


def check_run_files(cfg: Config, loaders: tuple[str, ...] = DATALOADERS) -> None:
    """Resolve the model's pretrained files (``AERIALSEG_CHECKPOINTS`` too) into ``cfg`` and check
    that every dataset folder exists, reporting **all** missing files in one error before the
    runner prints anything.

    Raises:
        ConfigCheckError: one message naming every missing pretrained file and dataset folder.
    """
    problems = []
    if isinstance(cfg.get("model"), Mapping):
        try:
            files = resolve_pretrained_files(cfg.model, verify=False)
            cfg.model = apply_resolved(cfg.model.to_dict(), files)
        except PretrainedFilesError as error:
            problems.append(str(error))
    missing_data = []
    for loader in loaders:
        dataloader = cfg.get(loader)
        if not isinstance(dataloader, Mapping):
            continue
        for path in _dataset_roots(dataloader.get("dataset")):
            if not osp.exists(path) and path not in missing_data:
                missing_data.append(path)
    if missing_data:
        problems.append(
            f"{len(missing_data)} dataset path(s) do not exist: "
            + ", ".join(f"'{p}'" for p in missing_data)
            + " (download the datasets into data/ as docs/datasets.md describes, or set "
            "--cfg-options <loader>.dataset.data_root=DIR)"
        )
    if problems:
        raise ConfigCheckError(" | ".join(problems))


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
    """Build a ``Runner``, or the config's ``runner_type`` (``FlexibleRunner``: DeepSpeed, FSDP).

    Every checkpoint the runner saves records the sha256 of the model's pretrained files
    (:class:`~aerialseg.engine.pretrained.RecordPretrainedFilesHook`).
    """
    hooks = list(cfg.get("custom_hooks") or [])
    if not any(
        isinstance(hook, Mapping) and hook.get("type") == "RecordPretrainedFilesHook"
        for hook in hooks
    ):
        cfg.custom_hooks = hooks + [dict(type="RecordPretrainedFilesHook")]
    # mmengine runs a full gc.collect() for every dataset it builds (and Python runs its own):
    # with torch, mmseg and transformers imported each walks millions of objects (~0.5 s).
    # Freezing what lives now (chiefly those modules; garbage is collected first) lets every
    # later collection skip them. Before the runner exists, so that no runner is kept forever.
    gc.collect()
    gc.freeze()
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
    parser.add_argument(
        "--seed",
        type=int,
        help="random seed of this run (overrides the config's randomness.seed); train with "
        "several seeds to report mean +- std",
    )
    parser.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic cuDNN/torch algorithms (slower; with --seed, repeatable runs)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank, args.launcher)

    try:
        cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    except (ConfigCheckError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    from aerialseg.datasets.split_check import ValTestOverlapError, check_val_test_separate

    try:  # checkpoints are selected on val: never on the split the tables report
        check_val_test_separate(cfg)
    except ValTestOverlapError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if args.amp:
        enable_amp(cfg)
    try:
        check_run_files(cfg, ("train_dataloader", "val_dataloader"))
    except ConfigCheckError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    if args.seed is not None or args.deterministic:
        randomness = dict(cfg.get("randomness") or {})
        if args.seed is not None:
            randomness["seed"] = args.seed
        if args.deterministic:
            randomness["deterministic"] = True
        cfg.randomness = randomness
    apply_resume(cfg, args.resume)
    prepare_cpu_distributed(cfg)
    runner = build_runner(cfg)
    runner.train()
    return runner
