"""Evaluate checkpoints on one or several test sets (clean and historic) and write the tables.

Behind ``tools/test.py CONFIG CHECKPOINT [CHECKPOINT|GLOB ...] [--work-dir D] [--protocol NAME]
[--cfg-options ...] [--launcher L] [--out DIR] [--historic]``. Test sets come from the config:

- ``test_sets = [dict(name=..., dataloader=dict(...), evaluator=dict(...) or None), ...]``, or
- ``test_dataloader`` / ``test_evaluator`` (one set, named ``<dataset>_<split>``);

and ``historic_test = dict(enabled=True, filter=dict(type='HistoricFilter', ...))`` (the
``configs/_base_/datasets/historic_test.py`` piece, or ``--historic``) adds a historic copy of each
set whose pipeline applies the deterministic filter just before packing.

Every table row carries its provenance (:mod:`aerialseg.evaluation.provenance`); several
checkpoints (one per seed) give per-run rows plus mean ± sample-std rows. A config whose
validation and test sets read the same files is refused (:mod:`aerialseg.datasets.split_check`).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import glob
import os
import os.path as osp
import sys

from mmengine.config import Config, ConfigDict
from mmengine.dist import is_main_process
from mmengine.logging import print_log

from aerialformats.atomic import atomic_write_text
from aerialseg.datasets.split_check import check_val_test_separate
from aerialseg.evaluation.protocols import PROTOCOLS, get_protocol
from aerialseg.evaluation.provenance import config_sha256, run_provenance, test_set_provenance
from aerialseg.evaluation.tables import write_benchmark_tables

__all__ = [
    "add_historic_filter",
    "collect_test_sets",
    "expand_checkpoints",
    "run_labels",
    "run_test_sets",
    "set_protocol",
    "test_main",
]

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
                historic_filter=filter_cfg,
            )
            for entry in sets
        ]
    return [
        {key: ConfigDict(value) if isinstance(value, dict) else value for key, value in s.items()}
        for s in sets
    ]


def run_test_sets(
    runner, test_sets: list[dict], out_dir: str | None = None, provenance: dict | None = None
) -> list[dict]:
    """Run ``runner.test()`` once per set (the model is loaded once).

    Args:
        provenance: the run's provenance (:func:`~aerialseg.evaluation.provenance.run_provenance`);
            each set adds its own (datasets, protocol, historic filter).

    Returns:
        ``[{'name', 'metrics', 'provenance'}]`` per set.
    """
    test_cfg = copy.deepcopy(runner.cfg.get("test_cfg") or dict(type="TestLoop"))
    results = []
    for test_set in test_sets:
        evaluator = copy.deepcopy(test_set["evaluator"])
        if out_dir is not None:
            for metric in evaluator if isinstance(evaluator, list) else [evaluator]:
                metric["output_dir"] = osp.join(out_dir, test_set["name"])
        runner._test_dataloader = test_set["dataloader"]
        runner._test_evaluator = evaluator
        # Built here rather than inside runner.test() so the dataset and the metrics can be
        # described (and the metrics told the provenance) before the run.
        loop = runner.build_test_loop(copy.deepcopy(test_cfg))
        set_provenance = {
            **(provenance or {}),
            **test_set_provenance(test_set, loop.dataloader.dataset, loop.evaluator.metrics),
        }
        for metric in loop.evaluator.metrics:
            if hasattr(metric, "provenance"):
                metric.provenance = set_provenance
        runner._test_loop = loop
        print_log(f"Testing on {test_set['name']}", logger="current")
        metrics = runner.test()
        results.append(
            dict(name=test_set["name"], metrics=dict(metrics), provenance=set_provenance)
        )
    return results


def expand_checkpoints(patterns: list[str]) -> list[str]:
    """Checkpoint files from paths and globs (``work_dirs/seed*/iter_8000.pth``), in order, each
    once; a path that does not exist or a glob that matches nothing is an error."""
    found: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(p for p in glob.glob(pattern) if osp.isfile(p))
            if not matches:
                raise FileNotFoundError(f"no checkpoint file matches '{pattern}'")
        elif osp.isfile(pattern):
            matches = [pattern]
        else:
            raise FileNotFoundError(f"checkpoint file not found: '{pattern}'")
        found += [m for m in matches if m not in found]
    return found


def run_labels(checkpoints: list[str]) -> list[str]:
    """Short distinct labels for several checkpoints: their paths relative to the folder they
    share, without the suffix (``seed0/iter_8000``); empty for a single checkpoint."""
    if len(checkpoints) < 2:
        return [""] * len(checkpoints)
    absolute = [osp.abspath(c) for c in checkpoints]
    common = osp.commonpath([osp.dirname(a) for a in absolute])
    return [osp.splitext(osp.relpath(a, common))[0] for a in absolute]


def set_protocol(test_sets: list[dict], protocol: str) -> None:
    """Score every set under the named protocol; rule overrides in the config are dropped so the
    protocol is exactly the preset."""
    get_protocol(protocol)
    for test_set in test_sets:
        evaluator = test_set["evaluator"]
        for metric in evaluator if isinstance(evaluator, list) else [evaluator]:
            if metric.get("type") == "ReferringMetric":
                metric["protocol"] = protocol
                for key in ("threshold_comparison", "eval_size", "empty_union"):
                    metric.pop(key, None)


def test_main(argv: list[str] | None = None) -> list[dict]:
    """Entry point of ``tools/test.py``; returns ``[{'name', 'metrics', 'provenance', 'run'}]``
    per checkpoint and test set."""
    from aerialseg.engine.launch import (
        add_common_arguments,
        load_config,
        set_local_rank,
    )

    parser = argparse.ArgumentParser(description="Evaluate an AerialSeg/MMSeg model")
    parser.add_argument("config", help="test config file path")
    parser.add_argument(
        "checkpoints",
        nargs="+",
        metavar="checkpoint",
        help="checkpoint file(s) or glob(s); with several (e.g. one per seed) the tables get "
        "per-run rows and mean ± std rows",
    )
    parser.add_argument("--out", help="folder for per-sample results (IoU and predicted RLE)")
    parser.add_argument(
        "--historic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also evaluate historic-filtered copies of the test sets (default: the config's "
        "historic_test.enabled)",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        help="score every test set under this evaluation protocol (default: the config's)",
    )
    parser.add_argument("--pretrained-root", help="folder searched for the pretrained files")
    parser.add_argument(
        "--allow-partial",
        action="store_true",
        help="load only the checkpoint tensors that match the model (experts; default: refuse)",
    )
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    set_local_rank(args.local_rank, args.launcher)
    try:
        checkpoints = expand_checkpoints(args.checkpoints)
        cfg = load_config(args.config, args.work_dir, args.cfg_options, args.launcher)
        allowed_overlap = check_val_test_separate(cfg)
    except (FileNotFoundError, ValueError) as error:  # ValTestOverlapError, ConfigCheckError
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    config_digest = config_sha256(cfg)
    labels = run_labels(checkpoints)
    results = []
    for checkpoint, label in zip(checkpoints, labels):
        out_dir = osp.join(args.out, label) if args.out and label else args.out
        evaluated = _evaluate_checkpoint(
            parser, args, copy.deepcopy(cfg), checkpoint, out_dir, config_digest
        )
        for result in evaluated:
            result["run"] = label
            if allowed_overlap:
                result["provenance"]["val_test_overlap_allowed"] = allowed_overlap
            results.append(result)
    if is_main_process():
        # The config as resolved (file + --cfg-options): `tools/test.py <this file> CHECKPOINT`
        # repeats the evaluation without the original command line.
        resolved = osp.join(cfg.work_dir, "benchmark_config.py")
        os.makedirs(cfg.work_dir, exist_ok=True)
        atomic_write_text(resolved, cfg.pretty_text)
        meta = dict(
            config=args.config,
            resolved_config=resolved,
            checkpoints=checkpoints,
            command=" ".join(["tools/test.py", *(argv if argv is not None else sys.argv[1:])]),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        written = write_benchmark_tables(results, cfg.work_dir, meta=meta)
        print(written["table"])
        print_log(
            f"Tables written to {written['markdown']}, {written['csv']}, {written['json']}",
            logger="current",
        )
    return results


def _evaluate_checkpoint(
    parser, args, cfg, checkpoint: str, out_dir: str | None, config_digest: str
) -> list[dict]:
    """Build the runner for one checkpoint and evaluate every test set with it."""
    from aerialseg.apis import load_trained_weights, read_checkpoint, resolve_model_config
    from aerialseg.engine import CheckpointError
    from aerialseg.engine.launch import build_runner
    from aerialseg.engine.pretrained import recorded_pretrained_files

    try:  # strict, portable loading (aerialseg.apis.trained_weights), not load_from's warnings
        state = read_checkpoint(checkpoint)
        overridden = [k for k in args.cfg_options or {} if k.startswith("model.")]
        resolve_model_config(cfg, checkpoint, state[1], args.pretrained_root, overridden)
    except (CheckpointError, FileNotFoundError) as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    cfg.load_from = None
    cfg.resume = False
    test_sets = collect_test_sets(cfg, args.historic)
    if args.protocol:
        set_protocol(test_sets, args.protocol)
    cfg.test_dataloader = test_sets[0]["dataloader"]
    cfg.test_evaluator = test_sets[0]["evaluator"]
    cfg.setdefault("test_cfg", dict(type="TestLoop"))
    # Testing needs none of the training pieces; dropping them lets test-only configs run too.
    for key in ("train_dataloader", "train_cfg", "optim_wrapper", "param_scheduler"):
        cfg[key] = None
    for key in ("val_dataloader", "val_cfg", "val_evaluator"):
        cfg[key] = None
    runner = build_runner(cfg)
    try:
        load_trained_weights(runner.model, checkpoint, args.allow_partial, state=state)
    except CheckpointError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")
    provenance = run_provenance(cfg, args.config, checkpoint, runner, config_digest)
    # The frozen towers are rebuilt from pretrained files the checkpoint names by digest.
    recorded = recorded_pretrained_files(state[1])
    provenance["pretrained_files"] = {
        key: entry.get("sha256") for key, entry in sorted(recorded.items())
    }
    return run_test_sets(runner, test_sets, out_dir, provenance)


test_main.__test__ = False  # not a pytest test, despite the name
