"""Fixtures for the whole suite."""

from __future__ import annotations

import gc
import os
import sys
import threading

# Every interpreter the tests start (tools, torchrun workers, transformers serve, datagen) inherits
# these: two pytest workers already use both cores of the reference machine, so a child's thread
# pool of one thread per core would only fight them. Set before torch is imported.
for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import pytest  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402

# tqdm's default write lock includes a multiprocessing semaphore, which every fork of this process
# shares. `make mutation` (mutmut, fork isolation) forks one pytest session per mutant from this
# process and kills those that overrun: a child killed while it holds the semaphore leaves it
# taken, and every later child that draws a progress bar waits on it forever and is counted as a
# timeout, i.e. a kill. On an idle machine that made 70 of the 78 equivalent `datagen.rules`
# mutants "time out" (14.5 instead of 3.7 minutes, 99.5 % instead of 94.7 %). A lock of this
# process's own and no monitor thread (which takes the lock every 10 s) keep the forks
# independent; no test shares bars between processes.
tqdm.tqdm.set_lock(threading.RLock())
tqdm.tqdm.monitor_interval = 0

_modules_when_frozen = 0


def _freeze_imported_modules() -> None:
    """Move everything alive now (chiefly imported modules: torch, mmseg, transformers) into the
    collector's permanent generation.

    mmengine's ``BaseDataset`` runs a full ``gc.collect()`` for every dataset it builds, and the
    interpreter runs full collections of its own: with those libraries imported each one walks
    millions of objects (~0.5 s). Frozen objects are skipped; garbage is still collected first.
    """
    global _modules_when_frozen
    if len(sys.modules) != _modules_when_frozen:
        gc.collect()
        gc.freeze()
        _modules_when_frozen = len(sys.modules)


def pytest_collection_finish(session):
    _freeze_imported_modules()


def pytest_runtest_setup(item):
    _freeze_imported_modules()  # again when a test module or a test imported more


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The tiny model's ops are small: on a shared 2-core machine one thread is faster than two
    threads fighting other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
