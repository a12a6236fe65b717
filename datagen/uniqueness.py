"""The uniqueness filter: keep an expression only if exactly one target of the patch fits it.

The original pipeline counted identical strings: an expression survived when no other object had
*emitted* the same text. That let ambiguous expressions through (a second ship that also lies left
of a harbor, but whose harbor was past the distance gate, never emitted the string) and dropped
good ones (an object that emitted a string twice cancelled itself). Here every candidate is a
predicate, evaluated against every target of its family:

- a target carries *possible* values per attribute slot, packed into one ``uint64`` of bits
  (grid cells, colours, extreme labels, size labels; see :data:`SLOT_OFFSETS`), and a boolean
  row of possible relation keys;
- a candidate names at most one value per slot (``required`` holds their bits) and at most one
  relation key;
- target t fits candidate c when both have the same ``key`` (category, or category and member
  count for clusters), ``bits[t] & required[c] == required[c]`` and, if c names a relation,
  ``relations[t, relation[c]]``.

A candidate is unique when exactly one target fits; its own target always fits because definite
values are always among the possible ones (checked). A patch's candidates are checked against
all its targets in one vectorised block; very large tables are split by key into blocks, so the
cost stays (candidates x same-key targets) bit operations.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "SLOT_OFFSETS",
    "SLOT_SIZES",
    "CandidateTable",
    "TargetTable",
    "count_matches",
    "slot_bits",
    "unique_candidates",
]

SLOT_SIZES = {"cell": 9, "color": 10, "extreme": 4, "size": 2}
SLOT_OFFSETS = {"cell": 0, "color": 9, "extreme": 19, "size": 23}
_BLOCK_ELEMENTS = 1 << 22  # candidates x targets per vectorised block (bounds memory)


def slot_bits(slot: str, values) -> np.ndarray:
    """Bits of value indices of one slot; -1 (not named) gives 0.

    Args:
        values: int array (M,) of value indices or -1.
    """
    values = np.asarray(values, dtype=np.int64)
    shift = (np.maximum(values, 0) + SLOT_OFFSETS[slot]).astype(np.uint64)
    bits = np.left_shift(np.uint64(1), shift)
    bits[values < 0] = 0
    return bits


@dataclass
class TargetTable:
    """The n targets one family of candidates is checked against.

    Attributes:
        key: (n,) int64, the family key (candidates only compete within a key).
        bits: (n,) uint64, possible attribute values.
        relations: (n, R) bool, possible relation keys.
    """

    key: np.ndarray
    bits: np.ndarray
    relations: np.ndarray


@dataclass
class CandidateTable:
    """M candidate expressions.

    Attributes:
        target: (M,) int64 index of the target that produced the candidate.
        required: (M,) uint64 bits of the named attribute values.
        relation: (M,) int64 relation key, or -1 when none is named.
    """

    target: np.ndarray
    required: np.ndarray
    relation: np.ndarray

    def __len__(self) -> int:
        return int(self.target.shape[0])


def _fits(
    targets: TargetTable, candidates: CandidateTable, cand: np.ndarray, tgt: np.ndarray
) -> np.ndarray:
    """(len(cand), len(tgt)) bool: which of the ``tgt`` targets fit each ``cand`` candidate."""
    required = candidates.required[cand][:, None]
    fits = (targets.bits[tgt][None, :] & required) == required
    relation = candidates.relation[cand]
    named = relation >= 0
    if named.any():
        rel_fits = targets.relations[np.ix_(tgt, relation[named])].T
        fits[named] &= rel_fits
    return fits


def count_matches(targets: TargetTable, candidates: CandidateTable) -> np.ndarray:
    """How many targets fit each candidate, (M,) int64.

    Raises:
        ValueError: a candidate does not fit its own target (its definite values are not among
            the target's possible ones), i.e. the rule tables are inconsistent.
    """
    count = len(candidates)
    matches = np.zeros(count, dtype=np.int64)
    if count == 0:
        return matches
    own = candidates.target
    own_fits = (targets.bits[own] & candidates.required) == candidates.required
    named = candidates.relation >= 0
    own_fits[named] &= targets.relations[own[named], candidates.relation[named]]
    if not own_fits.all():
        bad = int(np.flatnonzero(~own_fits)[0])
        raise ValueError(f"candidate {bad} does not fit its own target {int(own[bad])}")

    if count * targets.key.size <= _BLOCK_ELEMENTS:
        # Small patches (the common case): one block over all targets, keys compared directly.
        everyone = np.arange(targets.key.size)
        same_key = targets.key[own][:, None] == targets.key[None, :]
        return (_fits(targets, candidates, np.arange(count), everyone) & same_key).sum(axis=1)
    cand_key = targets.key[own]
    cand_order = np.argsort(cand_key, kind="stable")
    tgt_order = np.argsort(targets.key, kind="stable")
    sorted_tgt_keys = targets.key[tgt_order]
    keys, starts = np.unique(cand_key[cand_order], return_index=True)
    ends = np.append(starts[1:], count)
    for key, start, end in zip(keys.tolist(), starts.tolist(), ends.tolist()):
        lo = np.searchsorted(sorted_tgt_keys, key, side="left")
        hi = np.searchsorted(sorted_tgt_keys, key, side="right")
        tgt = tgt_order[lo:hi]
        block = max(1, _BLOCK_ELEMENTS // max(1, tgt.size))
        for first in range(start, end, block):
            cand = cand_order[first : min(first + block, end)]
            matches[cand] = _fits(targets, candidates, cand, tgt).sum(axis=1)
    return matches


def unique_candidates(targets: TargetTable, candidates: CandidateTable) -> np.ndarray:
    """(M,) bool: the candidates that exactly one target (their own) fits."""
    return count_matches(targets, candidates) == 1
