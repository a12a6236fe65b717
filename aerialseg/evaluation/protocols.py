"""Named evaluation protocols: the exact scoring rules of the papers people compare against.

Papers on referring remote-sensing segmentation disagree on four details that move mIoU by tenths
of a point (and by much more on no-target samples):

- **resolution**: the original image size, or both masks resized to a fixed square (RMSIN/LAVT
  score at 480x480, which weights every image equally in oIoU);
- **resize rule**: how a mask is brought to that square. RMSIN/LAVT resize with PIL's ``NEAREST``,
  which samples the source pixel under each target pixel's *centre*; torch's ``nearest`` samples
  under its top-left corner, which picks different rows/columns whenever the scale is not an
  integer (see :func:`pil_nearest_indices`);
- **Pr@X comparison**: ``IoU >= X`` (RMSIN/LAVT, mmdet) or ``IoU > X`` (RSRefSeg, RSRefSeg 2);
- **empty union** (empty target and empty prediction, e.g. NWPU-Refer no-target expressions):
  IoU 1 (ours), 0 (RMSIN/LAVT: ``this_iou = 0 if U == 0``), or NaN (RSRefSeg 2 divides without a
  guard, so one such sample makes gIoU NaN; only its per-category table skips NaN).

Each :class:`EvalProtocol` fixes all four; ``ReferringMetric(protocol=NAME)`` applies one and the
benchmark tables record it. The configs in ``configs/_base_/evaluators/`` select them by name.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "EMPTY_UNION_RULES",
    "PROTOCOLS",
    "RESIZE_RULES",
    "EvalProtocol",
    "get_protocol",
    "pil_nearest_indices",
]

RESIZE_RULES = ("pil_nearest",)
EMPTY_UNION_RULES = ("one", "zero", "nan")


@dataclass(frozen=True)
class EvalProtocol:
    """One complete scoring rule.

    Attributes:
        name: the preset's name (``custom`` when the arguments of a metric override a preset).
        eval_size: ``None`` for the original resolution, else ``(h, w)`` both masks are resized to.
        resize_rule: how masks are resized to ``eval_size`` (``'pil_nearest'``).
        threshold_comparison: ``'>='`` or ``'>'`` for Pr@X.
        empty_union: IoU of a sample whose prediction and target are both empty: ``'one'``,
            ``'zero'`` or ``'nan'`` (NaN propagates into mIoU; category breakdowns skip it).
        used_by: the papers/code bases whose numbers this protocol reproduces.
    """

    name: str
    eval_size: tuple[int, int] | None
    resize_rule: str
    threshold_comparison: str
    empty_union: str
    used_by: str

    def __post_init__(self) -> None:
        if self.threshold_comparison not in (">=", ">"):
            raise ValueError(
                f"threshold_comparison must be '>=' or '>', got {self.threshold_comparison!r}"
            )
        if self.empty_union not in EMPTY_UNION_RULES:
            raise ValueError(
                f"empty_union must be one of {EMPTY_UNION_RULES}, got {self.empty_union!r}"
            )
        if self.resize_rule not in RESIZE_RULES:
            raise ValueError(f"resize_rule must be one of {RESIZE_RULES}, got {self.resize_rule!r}")
        if self.eval_size is not None and (
            len(self.eval_size) != 2 or min(int(v) for v in self.eval_size) < 1
        ):
            raise ValueError(f"eval_size must be (h, w) with positive sides, got {self.eval_size}")

    def describe(self) -> dict:
        """A JSON-friendly record of every rule (for provenance)."""
        record = asdict(self)
        record["eval_size"] = list(self.eval_size) if self.eval_size is not None else "original"
        record["empty_union_iou"] = {"one": 1.0, "zero": 0.0, "nan": "NaN"}[self.empty_union]
        return record


PROTOCOLS: dict[str, EvalProtocol] = {
    "original_resolution": EvalProtocol(
        name="original_resolution",
        eval_size=None,
        resize_rule="pil_nearest",
        threshold_comparison=">=",
        empty_union="one",
        used_by="AerialSeg (default); the original-resolution scoring of RSRefSeg / RSRefSeg 2 "
        "and mmdet's RefSegMetric, with the >= thresholds of RMSIN/LAVT and a defined IoU of 1 "
        "for a correctly empty prediction (NWPU-Refer no-target expressions)",
    ),
    "rmsin_480": EvalProtocol(
        name="rmsin_480",
        eval_size=(480, 480),
        resize_rule="pil_nearest",
        threshold_comparison=">=",
        empty_union="zero",
        used_by="LAVT (CVPR'22), RMSIN (CVPR'24), LGCE (TGRS'24), FIANet (TGRS'24) and the "
        "RRSIS-D / RefSegRS tables that copy them: masks at 480x480 (PIL NEAREST), Pr@X with >=, "
        "IoU 0 for an empty union",
    ),
    "rsrefseg_strict": EvalProtocol(
        name="rsrefseg_strict",
        eval_size=None,
        resize_rule="pil_nearest",
        threshold_comparison=">",
        empty_union="nan",
        used_by="RSRefSeg (IGARSS'25) and RSRefSeg 2 (RefSegIoUMetric): original resolution, "
        "Pr@X with strict >, unguarded 0/0 = NaN per-sample IoU (gIoU becomes NaN, Pr@X counts "
        "it as a failure, the per-category table skips it)",
    ),
}


def get_protocol(name: str) -> EvalProtocol:
    """The preset ``name``; a clear error lists the known ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown evaluation protocol {name!r}; known: {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each of ``out_size`` target pixels under PIL's ``Image.NEAREST`` resize.

    Pillow's nearest resize is an affine transform with scale ``s = in / out`` evaluated at pixel
    centres: the source coordinate starts at ``0.5 * s`` and grows by ``s`` per pixel, accumulated
    in double precision, then truncated (``ImagingScaleAffine`` in ``Geometry.c``). The cumulative
    sum below repeats that accumulation so rounding ties fall the same way. torch's ``nearest``
    instead uses ``floor(i * s)`` (the pixel's corner), e.g. 3 -> 2 picks rows 0, 1 under torch
    and 0, 2 under PIL.

    Returns:
        (out_size,) int64 indices in ``[0, in_size)``.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got in={in_size}, out={out_size}")
    scale = float(in_size) / out_size
    steps = np.full(out_size, scale, dtype=np.float64)
    steps[0] = 0.5 * scale
    coords = np.cumsum(steps)
    return np.clip(coords.astype(np.int64), 0, in_size - 1)
