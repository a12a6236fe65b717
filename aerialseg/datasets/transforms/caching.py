"""Running the deterministic head of a pipeline once per sample."""

from __future__ import annotations

import copy
from collections import OrderedDict

from mmcv.transforms import BaseTransform, Compose
from mmseg.registry import TRANSFORMS

__all__ = ["CachedTransforms"]

_MISSING = object()


def _unchanged(before, after) -> bool:
    """Whether a value the wrapped transforms received came back as it was (same object and, for
    containers, the same contents: ``seg_fields`` is appended to in place)."""
    if before is _MISSING:
        return False
    try:
        return bool(before == after)
    except (TypeError, ValueError):  # arrays and other values without a plain equality
        return False


@TRANSFORMS.register_module()
class CachedTransforms(BaseTransform):
    """Runs ``transforms`` once per sample and replays their effect on later visits.

    For a small data set that is read for many epochs (the CPU demo trains 1,000 iterations on about
    a hundred samples) decoding and resizing the same image again each time is most of the loading
    cost. The first visit of a sample runs the wrapped transforms and keeps what they added,
    replaced or removed; a later visit applies deep copies of that to the incoming results, so
    every key the wrapped transforms did not touch (e.g. the expression ``text``, which a control
    set may swap) comes from the current sample, and nothing cached is shared with a consumer.

    Only deterministic transforms may be wrapped (loading, fixed-size resizing, ...): a transform
    with randomness (``Random*`` or mmcv's ``cache_randomness``) is refused. The cache lives in the
    process (each dataloader worker has its own).

    Args:
        transforms: the transforms to cache (configs or instances), applied in order.
        key: the results keys that identify a sample; together they must determine the output
            of the wrapped transforms. Default ``('sample_idx', 'img_path')``.
        max_items: keep at most this many samples (least recently used go first); None: no limit.
    """

    def __init__(
        self,
        transforms: list,
        key: tuple[str, ...] | list[str] = ("sample_idx", "img_path"),
        max_items: int | None = None,
    ) -> None:
        self.pipeline = Compose(transforms)
        for transform in self.pipeline:
            name = type(transform).__name__
            if name.startswith("Random") or getattr(transform, "_methods_with_randomness", None):
                raise ValueError(f"CachedTransforms caches deterministic transforms only: {name}")
        if not key:
            raise ValueError("CachedTransforms needs at least one key")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
        self.key = tuple(key)
        self.max_items = max_items
        self._cache: OrderedDict[tuple, tuple[dict, tuple[str, ...]]] = OrderedDict()

    def _sample_key(self, results: dict) -> tuple:
        missing = [name for name in self.key if name not in results]
        if missing:
            raise KeyError(f"CachedTransforms: the results have no {missing} to key the cache on")
        return tuple(results[name] for name in self.key)

    def transform(self, results: dict) -> dict | None:
        sample = self._sample_key(results)
        entry = self._cache.get(sample)
        if entry is None:
            before = {name: copy.copy(value) for name, value in results.items()}
            output = self.pipeline(dict(results))
            if output is None:  # a transform dropped the sample: do not remember that
                return None
            changed = {
                name: value
                for name, value in output.items()
                if not _unchanged(before.get(name, _MISSING), value)
            }
            removed = tuple(name for name in results if name not in output)
            entry = (copy.deepcopy(changed), removed)
            self._cache[sample] = entry
            if self.max_items is not None and len(self._cache) > self.max_items:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(sample)
        changed, removed = entry
        output = {name: value for name, value in results.items() if name not in removed}
        output.update(copy.deepcopy(changed))
        return output

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(transforms={list(self.pipeline)}, key={self.key}, "
            f"max_items={self.max_items})"
        )
