"""The embedding core share: a batch alone on the host gets every core; batches running at once share them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from rag.embedding_cores import CoreShare

ROOT = Path(__file__).resolve().parents[2]


def test_a_batch_alone_gets_all_cores(tmp_path):
    share = CoreShare(tmp_path / "slots", cores=2)
    with share.claim() as threads:
        assert threads == 2
    with share.claim() as threads:  # the slot was given back
        assert threads == 2


def test_batches_at_once_share_the_cores(tmp_path):
    share = CoreShare(tmp_path / "slots", cores=2)
    with share.claim() as first, share.claim() as second:  # two open files lock against each other, as threads do
        assert (first, second) == (2, 1)  # the first had the host alone when it started
        with share.claim() as third:
            assert third == 1
    with share.claim() as threads:
        assert threads == 2


HOLD = """
import sys
from pathlib import Path
from rag.embedding_cores import CoreShare
with CoreShare(Path(sys.argv[1]), cores=2).claim():
    print("holding", flush=True)
    sys.stdin.readline()
"""


def test_another_process_holding_a_slot_counts_and_its_death_frees_it(tmp_path):
    folder = tmp_path / "slots"
    share = CoreShare(folder, cores=2)
    # A plain child process (not multiprocessing's spawn, which re-imports this module through pytest's state).
    other = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert other.stdout.readline().strip() == "holding"
        with share.claim() as threads:
            assert threads == 1
        other.kill()  # killed mid-batch: the kernel drops its lock
        other.wait(timeout=30)
        with share.claim() as threads:
            assert threads == 2
    finally:
        if other.poll() is None:
            other.kill()
            other.wait(timeout=30)


def test_threads_of_one_process_count_each_other(tmp_path):
    share = CoreShare(tmp_path / "slots", cores=4)
    inside, release, seen = threading.Barrier(3), threading.Event(), []

    def batch() -> None:
        with share.claim():
            inside.wait(10)
            release.wait(10)

    workers = [threading.Thread(target=batch) for _ in range(2)]
    for worker in workers:
        worker.start()
    inside.wait(10)
    with share.claim() as threads:
        seen.append(threads)
    release.set()
    for worker in workers:
        worker.join()
    assert seen == [1]  # 4 cores over 3 batches
