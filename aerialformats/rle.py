"""COCO run-length encoded masks: the ``RLEMask`` record, text parsing, and numpy decoders.

A COCO compressed RLE stores a column-major mask as run lengths (background first), each value
as 5-bit chunks in ASCII (48 + chunk; 0x20 means "more chunks follow", 0x10 in the last chunk is
the sign); from the fourth value on a value is the difference to the run two places before.
pycocotools encodes, decodes and merges; the numpy decoders here read many short strings at once
(rules stage colours) and validate untrusted text before pycocotools sees it (it has no bounds
checks). Dict form everywhere in ``datagen``: ``{'size': [h, w], 'counts': str}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

__all__ = [
    "RLEMask",
    "decode_rle",
    "encode_mask",
    "merge_rles",
    "parse_rle_text",
    "rle_area_bbox",
    "rle_pixels",
    "rle_run_lengths",
    "rle_runs",
]


@dataclass
class RLEMask:
    """A COCO compressed RLE mask: ``size`` is ``(height, width)``, ``counts`` the ASCII string."""

    size: tuple[int, int]
    counts: str

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> RLEMask:
        """Encode a boolean/{0,1} mask of shape (H, W)."""
        if mask.ndim != 2:
            raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return cls(size=(int(rle["size"][0]), int(rle["size"][1])), counts=rle["counts"].decode())

    def to_coco(self) -> dict:
        """The dict pycocotools expects (``counts`` as bytes)."""
        return {"size": [self.size[0], self.size[1]], "counts": self.counts.encode("ascii")}

    def to_dict(self) -> dict:
        """A JSON-serialisable dict ``{'size': [h, w], 'counts': str}`` (the sample contract)."""
        return {"size": [self.size[0], self.size[1]], "counts": self.counts}

    def decode(self) -> np.ndarray:
        """Decode to a uint8 {0, 1} array of shape (H, W)."""
        return mask_utils.decode(self.to_coco())

    def to_text(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "))


_SIZE_RE = re.compile(r"""(['"])size\1\s*:\s*\[\s*(\d+)\s*,\s*(\d+)\s*\]""")
_COUNTS_STRING_RE = re.compile(r"""(['"])counts\1\s*:\s*(b?)(['"])((?:[^\\'"]|\\.)*)\3""", re.S)
_COUNTS_LIST_RE = re.compile(r"""(['"])counts\1\s*:\s*\[([\d,\s]*)\]""")
_ESCAPE_RE = re.compile(r"\\(x[0-9a-fA-F]{2}|.)", re.S)
_SIMPLE_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}


def _unescape_literal(body: str) -> str:
    def replace(match: re.Match) -> str:
        code = match.group(1)
        if code.startswith("x") and len(code) == 3:
            return chr(int(code[1:], 16))
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code]
        raise ValueError(f"unsupported escape sequence \\{code}")

    return _ESCAPE_RE.sub(replace, body)


def parse_rle_text(text: str) -> RLEMask:
    """Parse RLE text in JSON form or the release's repr form (``'counts': b'...'``).

    Uncompressed RLE (``counts`` as a list of run lengths) is accepted and compressed.

    Raises:
        ValueError: the text is not a ``{size, counts}`` mapping or the counts do not match size.
    """
    text = text.strip()
    if not (text.startswith("{") and text.endswith("}")):
        raise ValueError(f"RLE text is not a {{size, counts}} mapping: {text[:60]!r}")
    size_match = _SIZE_RE.search(text)
    if size_match is None:
        raise ValueError("RLE text has no 'size': [h, w] entry")
    height, width = int(size_match.group(2)), int(size_match.group(3))
    counts_match = _COUNTS_STRING_RE.search(text)
    if counts_match is not None:
        counts = _unescape_literal(counts_match.group(4))
        if not counts.isascii():
            raise ValueError("RLE counts contain characters outside the COCO RLE alphabet")
        rle = RLEMask(size=(height, width), counts=counts)
    else:
        list_match = _COUNTS_LIST_RE.search(text)
        if list_match is None:
            raise ValueError("RLE text has no 'counts' string or list")
        runs = [int(v) for v in list_match.group(2).replace(",", " ").split()]
        if sum(runs) != height * width:
            raise ValueError(f"RLE runs sum to {sum(runs)}, expected {height}*{width}")
        encoded = mask_utils.frPyObjects({"size": [height, width], "counts": runs}, height, width)
        rle = RLEMask(size=(height, width), counts=encoded["counts"].decode())
    _check_rle_length(rle)
    return rle


def _check_rle_length(rle: RLEMask) -> None:
    """Compare the decoded run lengths with ``size``.

    pycocotools decodes without bounds checks, so a corrupt string must be caught before decoding.
    """
    runs = rle_run_lengths(rle.counts)
    total = int(runs.sum())
    expected = rle.size[0] * rle.size[1]
    if (runs < 0).any():
        raise ValueError("RLE counts decode to a negative run length")
    if total != expected:
        raise ValueError(
            f"RLE counts cover {total} pixels but size {list(rle.size)} has {expected}"
        )


def rle_run_lengths(counts: str) -> np.ndarray:
    """Run lengths (int64, shape (M,)) of one COCO compressed RLE string, validated.

    Raises:
        ValueError: characters outside the RLE alphabet, a truncated string, or a value too long
            to be a run length (what a corrupt or hand-edited file holds).
    """
    chunks = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if chunks.size == 0:
        return np.zeros(0, dtype=np.int64)
    if (chunks < 0).any() or (chunks > 63).any():
        raise ValueError("RLE counts contain characters outside the COCO RLE alphabet")
    last = (chunks & 0x20) == 0
    if not last[-1]:
        raise ValueError("RLE counts string is truncated")
    ends = np.flatnonzero(last)
    if np.diff(np.concatenate(([-1], ends))).max() > 12:
        raise ValueError("RLE counts contain an impossibly long value")
    return rle_runs([counts])[0]


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool/uint8 -> ``{'size': [h, w], 'counts': str}``."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode()}


def _coco(rle: dict) -> dict:
    return {"size": rle["size"], "counts": rle["counts"].encode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    """``{'size', 'counts': str}`` -> (H, W) uint8 {0, 1}."""
    return mask_utils.decode([_coco(rle)])[:, :, 0]


def merge_rles(rles: list[dict]) -> dict:
    """Union of RLE masks of one size, without decoding."""
    merged = mask_utils.merge([_coco(r) for r in rles], intersect=False)
    return {"size": [int(v) for v in merged["size"]], "counts": merged["counts"].decode()}


def rle_runs(counts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Run lengths of COCO compressed RLE strings, decoded together with numpy.

    Each value is stored as 5-bit chunks (0x20: more chunks follow; 0x10 in the last chunk:
    negative); from the fourth value on, a value is the difference to the run two places
    earlier. Strings never share a value, so they are parsed as one buffer. No validation: use
    :func:`rle_run_lengths` on untrusted text.

    Returns:
        ``runs`` (V,) int64 (per string: background, foreground, background, ...) and ``owner``
        (V,) int64, the index of the string each run belongs to.
    """
    lengths = np.array([len(c) for c in counts], dtype=np.int64)
    chunks = np.frombuffer("".join(counts).encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if chunks.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    chunk_owner = np.repeat(np.arange(len(counts)), lengths)
    last = (chunks & 0x20) == 0
    starts = np.flatnonzero(np.concatenate(([True], last[:-1])))
    position = np.arange(chunks.size) - np.repeat(starts, np.diff(np.append(starts, chunks.size)))
    values = np.add.reduceat((chunks & 0x1F) << (5 * position), starts)
    negative = (chunks[last] & 0x10) != 0
    values[negative] -= np.int64(1) << (5 * (position[last][negative] + 1))
    owner = chunk_owner[starts]
    per_string = np.bincount(owner, minlength=len(counts))
    first = np.cumsum(per_string) - per_string
    index = np.arange(values.size) - first[owner]
    runs = values.copy()
    delta = index >= 3
    if delta.any():
        # runs[i] = runs[i - 2] + values[i]: a cumulative sum per (string, parity) chain,
        # started from the run at index 1 or 2 of the string.
        chain = owner * 2 + (index % 2)
        order = np.lexsort((index, chain))
        contrib = np.where(delta, values, 0)[order]
        total = np.cumsum(contrib)
        chain_sorted = chain[order]
        chain_start = np.flatnonzero(
            np.concatenate(([True], chain_sorted[1:] != chain_sorted[:-1]))
        )
        start_of = np.repeat(chain_start, np.diff(np.append(chain_start, order.size)))
        running = total - total[start_of] + contrib[start_of]
        base = values[first[owner[order]] + np.where(index[order] % 2 == 1, 1, 2)]
        runs[order[delta[order]]] = (base + running)[delta[order]]
    return runs, owner


def rle_pixels(rles: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Foreground pixels of several RLE masks, in O(total area) (no full-size decode).

    Returns:
        ``(owner, ys, xs)`` (P,) int64: the mask index and coordinates of every pixel.
    """
    if not rles:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    heights = np.array([int(r["size"][0]) for r in rles], dtype=np.int64)
    runs, owner = rle_runs([r["counts"] for r in rles])
    per_string = np.bincount(owner, minlength=len(rles))
    first = np.cumsum(per_string) - per_string
    index = np.arange(runs.size) - first[owner]
    ends = np.cumsum(runs)
    string_offset = (ends - runs)[first[owner]]
    run_start = ends - runs - string_offset
    foreground = index % 2 == 1
    fg_start, fg_len, fg_owner = run_start[foreground], runs[foreground], owner[foreground]
    total = int(fg_len.sum())
    linear = np.repeat(fg_start - (np.cumsum(fg_len) - fg_len), fg_len) + np.arange(total)
    pixel_owner = np.repeat(fg_owner, fg_len)
    height = heights[pixel_owner]
    return pixel_owner, linear % height, linear // height


def rle_area_bbox(rle: dict) -> tuple[int, tuple[int, int, int, int]]:
    """Pixel count and ``(xmin, ymin, xmax, ymax)`` (max exclusive) of an RLE mask."""
    coco = _coco(rle)
    area = int(mask_utils.area(coco))
    x, y, w, h = (int(v) for v in mask_utils.toBbox(coco))
    return area, (x, y, x + w, y + h)
