"""A data sampler that mixes the datasets of a ``ConcatDataset`` in configured proportions.

Plain concatenation lets each dataset appear in proportion to its size: in the paper's joint mix
Aerial-D supplies ~85-90 % of the samples and RefSegRS < 1 %. :class:`WeightedDatasetSampler`
draws a fixed share of every epoch from each dataset instead, by explicit weights or by
temperature sampling (share proportional to ``size ** (1 / temperature)``).

Within a dataset, samples are drawn without replacement until it is exhausted, then from a fresh
permutation. The stream depends only on ``seed`` and the epoch, so every rank computes the same
stream and takes every ``world_size``-th index of it; with ``IterBasedTrainLoop`` mmengine
restarts the sampler with the next epoch when it runs out.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import torch
from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.logging import print_log
from mmseg.registry import DATA_SAMPLERS
from torch.utils.data import Sampler

__all__ = ["WeightedDatasetSampler", "dataset_shares"]


def _dataset_name(dataset, index: int) -> str:
    name = getattr(dataset, "DATASET_NAME", None) or dataset.metainfo.get("dataset_name")
    return name or f"dataset{index}"


def dataset_shares(
    sizes: Sequence[int],
    names: Sequence[str],
    weights: Mapping[str, float] | Sequence[float] | None = None,
    temperature: float = 1.0,
) -> list[float]:
    """Each dataset's share of the samples (sums to 1).

    Args:
        sizes: number of samples of each dataset.
        names: each dataset's name (``dataset_name`` such as ``'aerial_d'``).
        weights: by name or by position; ``None`` uses temperature sampling.
        temperature: 1 = proportional to size, larger = flatter, ``inf`` = uniform.
    """
    if weights is None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        raw = [size ** (1.0 / temperature) if size else 0.0 for size in sizes]
    elif isinstance(weights, Mapping):
        unknown = sorted(set(weights) - set(names))
        missing = [name for name in names if name not in weights]
        if unknown or missing:
            raise ValueError(
                f"sampler weights name datasets {sorted(weights)}, but the ConcatDataset holds "
                f"{list(names)} (unknown: {unknown}, missing: {missing})"
            )
        raw = [float(weights[name]) for name in names]
    else:
        if len(weights) != len(sizes):
            raise ValueError(f"{len(weights)} sampler weights for {len(sizes)} datasets")
        raw = [float(weight) for weight in weights]
    if any(weight < 0 for weight in raw) or not sum(raw):
        raise ValueError(f"sampler weights must be >= 0 with a positive sum, got {raw}")
    for name, size, weight in zip(names, sizes, raw):
        if weight > 0 and size == 0:
            raise ValueError(f"dataset '{name}' has weight {weight} but no samples")
    total = sum(raw)
    return [weight / total for weight in raw]


@DATA_SAMPLERS.register_module()
class WeightedDatasetSampler(Sampler):
    """Sample a ``ConcatDataset`` with a fixed share per sub-dataset.

    Args:
        dataset: an mmengine/torch ``ConcatDataset`` (``datasets`` and ``cumulative_sizes``).
        weights: ``{dataset_name: weight}`` or one weight per sub-dataset; ``None`` for
            temperature sampling.
        temperature: see :func:`dataset_shares`.
        samples_per_epoch: stream length of one epoch over all ranks (default: ``len(dataset)``).
        seed: random seed (synchronised across ranks when None).
    """

    def __init__(
        self,
        dataset,
        weights: Mapping[str, float] | Sequence[float] | None = None,
        temperature: float = 1.0,
        samples_per_epoch: int | None = None,
        seed: int | None = None,
    ):
        if not hasattr(dataset, "datasets") or not hasattr(dataset, "cumulative_sizes"):
            raise TypeError(
                f"WeightedDatasetSampler needs a ConcatDataset, got {type(dataset).__name__}"
            )
        self.rank, self.world_size = get_dist_info()
        self.seed = sync_random_seed() if seed is None else seed
        self.dataset = dataset
        self.sizes = [len(sub) for sub in dataset.datasets]
        self.names = [_dataset_name(sub, i) for i, sub in enumerate(dataset.datasets)]
        self.offsets = [0, *dataset.cumulative_sizes[:-1]]
        self.shares = dataset_shares(self.sizes, self.names, weights, temperature)
        self.samples_per_epoch = samples_per_epoch or len(dataset)
        self.counts = self._counts()
        self.epoch = 0
        for name, size, share, count in zip(self.names, self.sizes, self.shares, self.counts):
            print_log(
                f"WeightedDatasetSampler: {name}: {size} samples, share {share:.3f}, "
                f"{count} draws per epoch",
                logger="current",
                level=logging.INFO,
            )

    def _counts(self) -> list[int]:
        """Draws per dataset per epoch (largest-remainder rounding of the shares)."""
        exact = [share * self.samples_per_epoch for share in self.shares]
        counts = [math.floor(value) for value in exact]
        by_remainder = sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])
        for i in by_remainder[: self.samples_per_epoch - sum(counts)]:
            counts[i] += 1
        return counts

    def _epoch_stream(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        stream = []
        for size, offset, count in zip(self.sizes, self.offsets, self.counts):
            drawn = []
            while len(drawn) < count:
                drawn.extend(torch.randperm(size, generator=generator).tolist())
            stream.extend(offset + index for index in drawn[:count])
        order = torch.randperm(len(stream), generator=generator).tolist()
        return [stream[i] for i in order]

    def __iter__(self) -> Iterator[int]:
        yield from self._epoch_stream()[self.rank :: self.world_size]

    def __len__(self) -> int:
        return math.ceil((self.samples_per_epoch - self.rank) / self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
