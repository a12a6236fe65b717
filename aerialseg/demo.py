"""``aerialseg demo`` (``make demo``): the whole framework end to end on CPU in a few minutes.

1. **datagen** draws synthetic aerial sources in the real iSAID/LoveDA layouts and runs the Aerial-D
   pipeline on them (patches, rules, unique expressions, XML export);
2. tiny random-init SigLIP and SAM checkpoints are written in their real formats;
3. the tiny ClipSAM trains on the generated train split with the mmengine runner;
4. ``tools/test.py``'s package function scores it on the val split twice: as is, and with the
   expressions shuffled across samples (:class:`ShuffledExpressionDataset`), a control that shows
   the model uses the text: a model that ignored it would score the same on both;
5. overlay PNGs (ground truth | prediction, with the expression) are drawn for a few val samples.

Every setting is in ``configs/demo.py``. Each stage resumes: datagen skips finished units, the
tiny checkpoints are kept, and training is skipped when its final checkpoint exists.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import os.path as osp
import time
from pathlib import Path

import cv2
import numpy as np
from mmengine.config import Config
from mmengine.logging import print_log
from mmseg.registry import DATASETS

from aerialformats.atomic import atomic_write_bytes
from aerialseg.predict import draw_overlay, encode_png

__all__ = [
    "ShuffledExpressionDataset",
    "apply_cpu_plan",
    "cached_pipeline",
    "cpu_plan",
    "demo_model_config",
    "run_demo",
]

TEST_SET = "synthetic_aerial_d_val"
CONTROL_SET = "synthetic_aerial_d_val_shuffled_expressions"
GROUND_TRUTH_COLOUR = (0, 158, 115)
PREDICTION_COLOUR = (230, 159, 0)


@DATASETS.register_module()
class ShuffledExpressionDataset:
    """A control test set: every sample keeps its image and target mask but is given the
    expression of another sample (a seeded random permutation in which no sample keeps its own
    expression, nor, wherever the set allows it, an identical text from another sample).

    A model that reads the text scores clearly lower here than on the wrapped dataset; a model
    that ignores it (e.g. segments the most salient object) scores the same.

    Args:
        dataset: the wrapped referring dataset (config or instance).
        seed: permutation seed.
        lazy_init: defer loading the wrapped dataset.
    """

    def __init__(self, dataset, seed: int = 0, lazy_init: bool = False) -> None:
        self.dataset = DATASETS.build(dataset) if isinstance(dataset, dict) else dataset
        self.seed = seed
        self._donors: np.ndarray | None = None
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.dataset.metainfo)

    def full_init(self) -> None:
        if self._donors is not None:
            return
        self.dataset.full_init()
        count = len(self.dataset)
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(count)
        donors = np.empty(count, dtype=np.int64)
        donors[order] = np.roll(order, -1)  # sample order[k] takes the text of order[k + 1]
        # Template expressions repeat across images ("all water in the image"): swap donors until
        # every sample gets a different text wherever the set allows it.
        texts = [self.dataset.get_data_info(i)["text"] for i in range(count)]
        for i in range(count):
            if texts[donors[i]] != texts[i]:
                continue
            for j in rng.permutation(count):
                if texts[donors[j]] != texts[i] and texts[donors[i]] != texts[j]:
                    donors[i], donors[j] = donors[j], donors[i]
                    break
        self._donors = donors

    def get_data_info(self, index: int) -> dict:
        self.full_init()
        info = self.dataset.get_data_info(index)
        info["text"] = self.dataset.get_data_info(int(self._donors[index]))["text"]
        return info

    def __getitem__(self, index: int) -> dict:
        return self.dataset.pipeline(self.get_data_info(index))

    def __len__(self) -> int:
        self.full_init()
        return len(self._donors)


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def cpu_plan(
    threads: dict, max_datagen_workers: int, cores: int | None = None, load: float | None = None
) -> dict:
    """Thread and process counts of each demo stage (``configs/demo.py`` explains the policy).

    Args:
        threads: the config's ``threads`` (``torch``, ``datagen_workers`` int or ``'auto'``,
            ``dataloader_workers``).
        max_datagen_workers: ``datagen.workers``, the most datagen processes to use.
        cores, load: ``os.cpu_count()`` and the 1-minute ``os.getloadavg()`` (read when None).

    Returns:
        ``{'torch', 'datagen_workers', 'dataloader_workers', 'cores', 'load'}``.
    """
    cores = cores if cores is not None else os.cpu_count() or 1
    load = load if load is not None else os.getloadavg()[0]
    datagen_workers = threads.get("datagen_workers", "auto")
    if datagen_workers == "auto":
        idle = cores - int(round(load))
        datagen_workers = max(1, min(max_datagen_workers, idle))
    elif not isinstance(datagen_workers, int) or datagen_workers < 1:
        raise ValueError(f"threads.datagen_workers must be 'auto' or >= 1, got {datagen_workers!r}")
    torch_threads = int(threads.get("torch", 1))
    if torch_threads < 1:
        raise ValueError(f"threads.torch must be >= 1, got {torch_threads}")
    return {
        "torch": torch_threads,
        "datagen_workers": int(datagen_workers),
        "dataloader_workers": int(threads.get("dataloader_workers", 0)),
        "cores": cores,
        "load": round(float(load), 2),
    }


def apply_cpu_plan(plan: dict) -> None:
    """Pin torch, OpenMP/MKL/OpenBLAS (for this and every child process) and OpenCV threads."""
    import torch

    for name in THREAD_ENV:
        os.environ[name] = str(plan["torch"])
    torch.set_num_threads(plan["torch"])
    # Settable only before the first inter-op work (a second demo in one process): keep it then.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(plan["torch"])
    cv2.setNumThreads(plan["torch"])


def _step(number: int, title: str) -> None:
    print_log(f"==> [{number}/5] {title}", logger="current")


def generate_data(cfg: Config, work: Path, workers: int | None = None) -> str:
    """Run datagen (synthetic sources -> Aerial-D export); returns the Aerial-D data root.

    ``workers`` defaults to ``datagen.workers``."""
    from datagen.config import load_config
    from datagen.export import export_dir
    from datagen.pipeline import run_pipeline

    workers = workers if workers is not None else cfg.datagen.workers
    overrides = [f"work_dir={work / 'datagen'}", f"seed={cfg.seed}"]
    overrides += [f"workers={workers}", *cfg.datagen.overrides]
    datagen_cfg = load_config(cfg.datagen.config, overrides)
    run_pipeline(datagen_cfg)
    return str(export_dir(datagen_cfg.work_path) / "aeriald")


def cached_pipeline(pipeline: list) -> list:
    """``[t1, ..., tn, PackReferringInputs]`` -> ``[CachedTransforms([t1, ..., tn]), Pack...]``.

    The demo reads each of its ~100 samples many times: loading, decoding and resizing them once
    leaves only the packing per visit. Packing stays outside the cache so that every batch gets
    fresh ``SegDataSample`` objects, which the model writes into.
    """
    pipeline = list(pipeline)
    if not pipeline or pipeline[-1].get("type") != "PackReferringInputs":
        raise ValueError("data.cache_samples needs a pipeline that ends in PackReferringInputs")
    if len(pipeline) == 1:
        return pipeline
    return [dict(type="CachedTransforms", transforms=pipeline[:-1]), pipeline[-1]]


def demo_model_config(cfg: Config, data_root: str, pretrained, work: Path) -> Config:
    """The tiny ClipSAM config of the demo: data roots, filters, schedule and the two test sets."""
    from aerialseg.engine import load_config

    train, test = cfg.train, cfg.test
    model_cfg = load_config(
        cfg.model.config, work_dir=str(work / "train"), cfg_options=cfg.model.get("cfg_options")
    )
    model_cfg.custom_imports = dict(
        imports=["aerialseg", "aerialseg.demo"], allow_failed_imports=False
    )
    model_cfg.model.vlm.pretrained = pretrained.vlm_path
    model_cfg.model.sam.checkpoint = pretrained.sam_path
    data = dict(cfg.data)
    cache_samples = bool(data.pop("cache_samples", False))
    filters = {key: value for key, value in data.items() if value is not None}
    for loader, split, batch_size in (
        ("train_dataloader", "train", train.batch_size),
        ("test_dataloader", "val", test.batch_size),
    ):
        model_cfg[loader] = copy.deepcopy(model_cfg[loader])
        model_cfg[loader].batch_size = batch_size
        loader_workers = int(cfg.get("threads", {}).get("dataloader_workers", 0))
        model_cfg[loader].num_workers = loader_workers
        model_cfg[loader].persistent_workers = loader_workers > 0
        model_cfg[loader].dataset.update(data_root=data_root, split=split, **filters)
        if cache_samples:
            dataset = model_cfg[loader].dataset
            dataset.pipeline = cached_pipeline(dataset.pipeline)
    # Scored once, after training, by the test step (twice: clean and control).
    model_cfg.val_dataloader = model_cfg.val_evaluator = model_cfg.val_cfg = None
    model_cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=train.max_iters)
    model_cfg.optim_wrapper.optimizer.lr = train.lr
    warmup = min(train.warmup_iters, train.max_iters - 1)
    model_cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=warmup),
        dict(
            type="PolyLR", power=0.9, eta_min=0.0, by_epoch=False, begin=warmup, end=train.max_iters
        ),
    ]
    hooks = model_cfg.default_hooks
    hooks.logger.interval = train.log_interval
    hooks.checkpoint.update(interval=train.max_iters, max_keep_ckpts=1, save_last=True)
    model_cfg.randomness = dict(seed=cfg.seed)
    control = copy.deepcopy(model_cfg.test_dataloader)
    control.dataset = dict(
        type="ShuffledExpressionDataset", dataset=control.dataset, seed=test.control_seed
    )
    model_cfg.test_sets = [
        dict(name=TEST_SET, dataloader=model_cfg.test_dataloader),
        dict(name=CONTROL_SET, dataloader=control),
    ]
    return model_cfg


def train_model(model_cfg: Config, config_path: str) -> tuple[str, list[float]]:
    """Train (or find the finished checkpoint); returns its path and the logged losses."""
    from aerialseg.engine import build_runner

    final = osp.join(model_cfg.work_dir, f"iter_{model_cfg.train_cfg.max_iters}.pth")
    losses_path = osp.join(model_cfg.work_dir, "losses.json")
    if osp.isfile(final) and osp.isfile(losses_path):
        print_log(f"training already finished: {final}", logger="current")
        with open(losses_path, encoding="utf-8") as file:
            return final, json.load(file)
    run_cfg = Config.fromfile(config_path)
    run_cfg.resume = True  # continues from the last checkpoint of an interrupted run, if any
    runner = build_runner(run_cfg)
    runner.train()
    values, _ = runner.message_hub.get_scalar("train/loss").data
    losses = [round(float(v), 5) for v in values]
    atomic_write_bytes(losses_path, json.dumps(losses).encode())
    return final, losses


def evaluate(config_path: str, checkpoint: str, work: Path) -> dict[str, dict]:
    """``tools/test.py CONFIG CHECKPOINT`` on both test sets; returns metrics by set name."""
    from aerialseg.evaluation import test_main

    results = test_main([config_path, checkpoint, "--work-dir", str(work / "test")])
    return {result["name"]: result["metrics"] for result in results}


def _panel(image: np.ndarray, mask: np.ndarray, label: str, colour, scale: int) -> np.ndarray:
    if scale != 1:
        size = (image.shape[1] * scale, image.shape[0] * scale)
        image = cv2.resize(image, size, interpolation=cv2.INTER_NEAREST)
    return draw_overlay(image, [mask], [label], max_side=None, colors=[colour])


def draw_overlays(cfg: Config, config_path: str, checkpoint: str, work: Path) -> list[str]:
    """Ground truth | prediction PNGs for ``overlays.count`` val samples, spread over the set."""
    from mmseg.registry import TRANSFORMS

    from aerialseg.apis import ReferringSegmenter

    model_cfg = Config.fromfile(config_path)
    dataset = DATASETS.build({**model_cfg.test_dataloader.dataset, "pipeline": []})
    load_mask = TRANSFORMS.build(dict(type="LoadReferringMask"))
    segmenter = ReferringSegmenter(model_cfg, checkpoint)
    out_dir = work / "overlays"
    count = min(cfg.overlays.count, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int) if count else []
    written = []
    for rank, index in enumerate(indices):
        info = dataset.get_data_info(int(index))
        image = cv2.cvtColor(cv2.imread(info["img_path"], cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        target = load_mask(dict(info, ori_shape=image.shape[:2]))["gt_seg_map"].astype(bool)
        prediction = segmenter.predict(image, [info["text"]])
        predicted = prediction.masks[0]
        union = np.logical_or(target, predicted).sum()
        iou = np.logical_and(target, predicted).sum() / union if union else 1.0
        scale = cfg.overlays.scale
        left = _panel(image, target, f"target: {info['text']}", GROUND_TRUTH_COLOUR, scale)
        right = _panel(image, predicted, f"prediction (IoU {iou:.2f})", PREDICTION_COLOUR, scale)
        gap = np.full((left.shape[0], 6, 3), 255, np.uint8)
        path = out_dir / f"{rank:02d}_{info['img_id']}.png"
        atomic_write_bytes(path, encode_png(np.concatenate([left, gap, right], axis=1)))
        written.append(str(path))
    return written


def run_demo(
    config: str = "configs/demo.py",
    work_dir: str | None = None,
    cfg_options: dict | None = None,
) -> dict:
    """Run the demo; returns (and writes to ``<work_dir>/summary.json``) its figures and paths."""
    from aerialseg.models.tiny import write_tiny_checkpoints

    if not osp.isfile(config):
        raise FileNotFoundError(f"demo config not found: '{config}'")
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    work = Path(cfg.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    plan = cpu_plan(cfg.get("threads", {}), cfg.datagen.workers)
    apply_cpu_plan(plan)
    print_log(
        f"CPU plan: {plan['cores']} cores, load {plan['load']}: torch {plan['torch']} thread(s), "
        f"{plan['datagen_workers']} datagen worker(s), "
        f"{plan['dataloader_workers']} dataloader worker(s)",
        logger="current",
    )

    _step(1, "datagen: synthetic sources -> Aerial-D patches, rules, expressions, XML")
    data_root = generate_data(cfg, work, plan["datagen_workers"])
    _step(2, "tiny random-init SigLIP and SAM checkpoints (real file formats)")
    pretrained = write_tiny_checkpoints(work / "pretrained", seed=cfg.model.pretrained_seed)
    _step(3, f"training the tiny ClipSAM for {cfg.train.max_iters} iterations")
    model_cfg = demo_model_config(cfg, data_root, pretrained, work)
    config_path = str(work / "clipsam-tiny_demo.py")
    model_cfg.dump(config_path)
    checkpoint, losses = train_model(model_cfg, config_path)
    _step(4, "tools/test.py: clean and with expressions shuffled across samples (control)")
    metrics = evaluate(config_path, checkpoint, work)
    _step(5, "overlay PNGs of test predictions")
    overlays = draw_overlays(cfg, config_path, checkpoint, work)

    clean, control = metrics[TEST_SET], metrics[CONTROL_SET]
    summary = {
        "test_mIoU": round(float(clean["mIoU"]), 2),
        "test_oIoU": round(float(clean["oIoU"]), 2),
        "control_mIoU": round(float(control["mIoU"]), 2),
        "control_oIoU": round(float(control["oIoU"]), 2),
        "test_samples": int(clean["N"]),
        "train_loss_first": losses[0],
        "train_loss_last": losses[-1],
        "checkpoint": checkpoint,
        "config": config_path,
        "tables": str(work / "test" / "benchmark.md"),
        "overlays": overlays,
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_plan": plan,
    }
    atomic_write_bytes(work / "summary.json", json.dumps(summary, indent=1).encode())
    print(
        "\n".join(
            [
                "",
                f"AerialSeg demo finished in {summary['seconds']:.0f} s",
                f"  test mIoU {summary['test_mIoU']:6.2f}   (synthetic Aerial-D val, "
                f"{summary['test_samples']} expressions; oIoU {summary['test_oIoU']:.2f})",
                f"  control   {summary['control_mIoU']:6.2f}   (the same model with the "
                "expressions shuffled across samples)",
                f"  train loss {losses[0]:.3f} -> {losses[-1]:.3f}",
                f"  tables:    {summary['tables']}",
                f"  overlays:  {work / 'overlays'}/ ({len(overlays)} PNGs: ground truth | "
                "prediction)",
                f"  model:     {checkpoint}",
                f"  try:       aerialseg predict IMAGE -e 'all water' --checkpoint {checkpoint}",
                f"             aerialseg serve --checkpoint {checkpoint}",
            ]
        )
    )
    return summary
