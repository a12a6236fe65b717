"""Evaluate a checkpoint on one or several test sets (clean and historic) and write the tables.

Behind ``tools/test.py CONFIG CHECKPOINT [--work-dir D] [--cfg-options ...] [--launcher L]
[--out DIR] [--historic]``. Test sets come from the config:

- ``test_sets = [dict(name=..., dataloader=dict(...), evaluator=dict(...) or None), ...]``, or
- ``test_dataloader`` / ``test_evaluator`` (one set, named ``<dataset>_<split>``);

and ``historic_test = dict(enabled=True, filter=dict(type='HistoricFilter', ...))`` (the
``configs/_base_/datasets/historic_test.py`` piece, or ``--historic``) adds a historic copy of each
set whose pipeline applies the deterministic filter just before packing.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import hashlib
import os.path as osp

from mmengine.config import Config, ConfigDict
from mmengine.dist import is_main_process
from mmengine.logging import print_log

from aerialseg.evaluation.tables import write_benchmark_tables

__all__ = ["add_historic_filter", "collect_test_sets", "run_test_sets", "test_main"]

DEFAULT_HISTORIC_FILTER = dict(type="HistoricFilter", prob=1.0, deterministic=True, seed=0)
PACK_TRANSFORMS = ("PackReferringInputs", "PackSegInputs")


def _dataset_pipelines(dataset_cfg: dict):
    """Yield every ``pipeline`` list of a dataset config, looking inside wrapper datasets."""
    if "pipeline" in dataset_cfg:
        yield dataset_cfg["pipeline"]
    for inner in dataset_cfg.get("datasets", []):
        yield from _dataset_pipelines(inner)
    if isinstance(dataset_cfg.get("dataset"), dict):
        yield from _dataset_pipelines(dataset_cfg["dataset"])


def add_historic_filter(dataloader_cfg: dict, filter_cfg: dict | None = None) -> dict:
    """A copy of ``dataloader_cfg`` whose pipelines apply ``filter_cfg`` right before packing."""
    dataloader_cfg = copy.deepcopy(dataloader_cfg)
    filter_cfg = dict(filter_cfg or DEFAULT_HISTORIC_FILTER)
    found = False
    for pipeline in _dataset_pipelines(dataloader_cfg["dataset"]):
        types = [step.get("type") for step in pipeline]
        position = next((i for i, t in enumerate(types) if t in PACK_TRANSFORMS), len(pipeline))
        pipeline.insert(position, copy.deepcopy(filter_cfg))
        found = True
    if not found:
        raise ValueError(
            "the test dataloader's dataset has no pipeline to add the historic filter to"
        )
    return dataloader_cfg


def _default_set_name(dataloader_cfg: dict) -> str:
    dataset = dataloader_cfg["dataset"]
    from mmseg.registry import DATASETS

    dataset_class = DATASETS.get(dataset.get("type", ""))
    name = getattr(dataset_class, "DATASET_NAME", "") or str(dataset.get("type", "test"))
    return f"{name}_{dataset['split']}" if dataset.get("split") else name


def collect_test_sets(cfg: Config, historic: bool | None = None) -> list[dict]:
    """``[{'name', 'dataloader', 'evaluator'}]`` from the config (see the module docstring)."""
    if cfg.get("test_sets"):
        sets = [
            dict(
                name=entry["name"],
                dataloader=entry["dataloader"],
                evaluator=entry.get("evaluator") or cfg.test_evaluator,
            )
            for entry in cfg.test_sets
        ]
    else:
        if cfg.get("test_dataloader") is None or cfg.get("test_evaluator") is None:
            raise ValueError("the config needs test_sets, or test_dataloader and test_evaluator")
        sets = [
            dict(
                name=_default_set_name(cfg.test_dataloader),
                dataloader=cfg.test_dataloader,
                evaluator=cfg.test_evaluator,
            )
        ]
    historic_cfg = cfg.get("historic_test") or {}
    if historic is None:
        historic = bool(historic_cfg.get("enabled", False))
    if historic:
        filter_cfg = historic_cfg.get("filter", DEFAULT_HISTORIC_FILTER)
        sets += [
            dict(
                name=f"{entry['name']}_historic",
                dataloader=add_historic_filter(entry["dataloader"], filter_cfg),
                evaluator=entry["evaluator"],
            )
            for entry in sets
        ]
    return [
        {key: ConfigDict(value) if isinstance(value, dict) else value for key, value in s.items()}
        for s in sets
    ]


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_test_sets(runner, test_sets: list[dict], out_dir: str | None = None) -> list[dict]:
    """Run ``runner.test()`` once per set (the checkpoint is loaded once); returns the results."""
    test_cfg = copy.deepcopy(runner.cfg.get("test_cfg") or dict(type="TestLoop"))
    results = []
    for test_set in test_sets:
        evaluator = copy.deepcopy(test_set["evaluator"])
        if out_dir is not None:
            for metric in evaluator if isinstance(evaluator, list) else [evaluator]:
                metric["output_dir"] = osp.join(out_dir, test_set["name"])
        runner._test_dataloader = test_set["dataloader"]
        runner._test_evaluator = evaluator
        runner._test_loop = copy.deepcopy(test_cfg)
        print_log(f"Testing on {test_set['name']}", logger="current")
        metrics = runner.test()
        results.append(dict(name=test_set["name"], metrics=dict(metrics)))
    return results


def test_main(argv: list[str] | None = None) -> list[dict]:
    """Entry point of ``tools/test.py``; returns ``[{'name', 'metrics'}]`` per test set."""
    from aerialseg.engine.launch import (
        add_common_arguments,
        build_runner,
        load_config,
        set_local_rank,
    )

    parser = argparse.ArgumentParser(description="Evaluate an AerialSeg/MMSeg model")
    parser.add_argument("config", help="test config file path")
    parser.add_argument("checkpoint", help="checkpoint file")
    parser.add_argument("--out", help="folder for per-sample results (IoU and predicted RLE)")
    parser.add_argument(
        "--historic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also evaluate historic-filtered copies of the test sets (default: the config's "
        "historic_test.enabled)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank, args.launcher)
    if not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint file not found: '{args.checkpoint}'")

    cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    test_sets = collect_test_sets(cfg, args.historic)
    cfg.test_dataloader = test_sets[0]["dataloader"]
    cfg.test_evaluator = test_sets[0]["evaluator"]
    cfg.setdefault("test_cfg", dict(type="TestLoop"))
    # Testing needs none of the training pieces; dropping them lets test-only configs run too.
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg[key] = None
    for key in ("val_dataloader", "val_cfg", "val_evaluator"):
        cfg[key] = None
    runner = build_runner(cfg)
    results = run_test_sets(runner, test_sets, args.out)
    if is_main_process():
        meta = dict(
            config=args.config,
            checkpoint=args.checkpoint,
            checkpoint_sha256=file_sha256(args.checkpoint),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        written = write_benchmark_tables(results, cfg.work_dir, meta=meta)
        print(written["table"])
        print_log(
            f"Tables written to {written['markdown']}, {written['csv']}, {written['json']}",
            logger="current",
        )
    return results


test_main.__test__ = False  # not a pytest test, despite the name
