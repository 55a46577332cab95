"""The collective-timeout watchdog (hpc/watchdog.py): which ranks it names, and that it fires only then."""
import json
import threading
import time

import pytest

from hpc.watchdog import EXIT_CODE, Watchdog, start


def write(folder, rank, beat, progress=0, waiting=False, done=False, host="n2"):
    (folder / f"rank-{rank}.json").write_text(json.dumps(dict(rank=rank, host=host, pid=100 + rank, beat=beat,
                                                              progress=progress, waiting=waiting, done=done)))


@pytest.fixture
def dog(tmp_path):
    d = Watchdog(tmp_path, rank=0, size=2, timeout=10.0)
    return d


def test_a_rank_whose_heartbeat_stops_is_named_with_its_host(dog, tmp_path):
    write(tmp_path, 1, beat=1)
    dog._read(0.0)
    write(tmp_path, 1, beat=2, progress=1)
    dog._read(5.0)
    assert dog.verdict(14.0) is None  # 9 s without a beat: not yet
    line, logger = dog.verdict(15.0)
    assert "rank 1 (host n2, pid 101) does not respond" in line and "no heartbeat for 10 s" in line
    assert logger == 0


def test_a_slow_rank_that_progresses_is_waited_for(dog, tmp_path):
    for t in range(0, 60, 5):  # rank 1 works (not waiting) and finishes a block every 5 s
        write(tmp_path, 1, beat=t + 1, progress=t)
        dog._read(float(t))
    assert dog.verdict(60.0) is None


def test_a_live_rank_that_makes_no_progress_is_named(dog, tmp_path):
    for t in range(0, 30, 2):  # its watchdog beats, its main thread never finishes anything
        write(tmp_path, 1, beat=t + 1, progress=7)
        dog._read(float(t))
    line, _ = dog.verdict(30.0)
    assert "rank 1 (host n2, pid 101) is alive but made no progress" in line


def test_every_rank_waiting_is_the_collective_itself(dog, tmp_path):
    for t in range(0, 30, 2):
        write(tmp_path, 1, beat=t + 1, progress=3, waiting=True)
        dog._read(float(t))
    line, _ = dog.verdict(30.0)
    assert "every rank has waited" in line


def test_a_finished_rank_is_never_hung_but_waiting_alone_is(tmp_path):
    dog = Watchdog(tmp_path, rank=0, size=3, timeout=10.0)
    write(tmp_path, 1, beat=5, done=True)
    for t in range(0, 100, 5):
        write(tmp_path, 2, beat=t + 1, progress=t)  # rank 2 still works
        dog._read(float(t))
    assert dog.verdict(100.0) is None
    write(tmp_path, 2, beat=999, done=True)
    dog._read(101.0)
    line, logger = dog.verdict(101.0)
    assert "every other rank has already finished" in line and logger == 0


def test_the_thread_fires_only_while_waiting_and_exits_with_the_code(tmp_path):
    exits = []
    fired = threading.Event()

    def fake_exit(code):
        exits.append(code)
        fired.set()

    a = Watchdog(tmp_path, rank=0, size=2, timeout=1.0, interval=0.1, exit=fake_exit).start()
    b = Watchdog(tmp_path, rank=1, size=2, timeout=1.0, interval=0.1, exit=fake_exit).start()
    try:
        for _ in range(20):  # both healthy and progressing for 2 s (twice the timeout): nothing fires
            a.advance(), b.advance()
            time.sleep(0.1)
        assert not exits
        b._stop.set()  # rank 1 "stopped": its thread no longer beats
        b._thread.join()
        with a.waiting():
            assert fired.wait(5.0)
        assert exits == [EXIT_CODE]
    finally:
        a._stop.set()


def test_a_launch_removes_earlier_launches_on_rank_0_only(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "rank-1.json").write_text("{}")
    other = start(tmp_path, "new", rank=1, size=2, timeout=0)  # disabled: no thread, no files
    assert (tmp_path / "old").exists() and other.folder == tmp_path / "new"
    dog = start(tmp_path, "new", rank=0, size=2, timeout=0)
    assert dog.folder == tmp_path / "new" and not (tmp_path / "old").exists()
