"""How many CPU threads one embedding batch may use, when several ingest tasks on a host share its cores.

Each ingest task process embeds on its share of the cores (two tasks on 2 cores: one thread each), which keeps
both cores busy while both have work, but leaves one idle while the last document of a batch of uploads runs
alone. Here each running batch holds one slot file under an exclusive ``flock``; a batch that finds no other slot
held runs on all the cores, one that finds others busy on its share. The kernel drops a dead process's locks, so
a killed worker never leaves a slot taken; threads of one process (Dramatiq) hold separate open files, which lock
against each other as processes do.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class CoreShare:
    """Slot files in ``folder``: ``claim()`` holds one for a batch and yields the threads that batch may use."""

    def __init__(self, folder: Path, cores: int, slots: int | None = None) -> None:
        self.folder = folder
        self.cores = max(1, cores)
        self.slots = slots or 4 * self.cores  # more tasks than slots: the extra ones count as busy, one thread
        folder.mkdir(parents=True, exist_ok=True)

    def _path(self, index: int) -> Path:
        return self.folder / f"slot-{index}"

    def _try_lock(self, index: int):
        handle = open(self._path(index), "a")  # noqa: SIM115 - held for the batch, closed by the caller
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        return handle

    def _others_busy(self, mine: int) -> int:
        busy = 0
        for index in range(self.slots):
            if index == mine:
                continue
            probe = self._try_lock(index)
            if probe is None:
                busy += 1
            else:
                probe.close()  # closing drops the lock
        return busy

    @contextmanager
    def claim(self) -> Iterator[int]:
        """Hold a slot while the batch runs; yields its threads: all cores alone, else cores ÷ tasks (at least 1)."""
        held, mine = None, -1
        for index in range(self.slots):
            held = self._try_lock(index)
            if held is not None:
                mine = index
                break
        try:
            running = 1 + self._others_busy(mine) if held is not None else self.slots + 1
            yield max(1, self.cores // running)
        finally:
            if held is not None:
                held.close()


def host_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
