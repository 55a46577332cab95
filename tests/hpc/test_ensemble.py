"""Ensemble members over ranks: the wait through the run directory, and each rank's process. The training itself
under mpirun: tests/hpc/test_distributed.py (members over ranks equal members one after the other; stop and resume)."""
import threading

from cloudvox.inference import MEMBER
from hpc.ensemble import STOPPED_RANK, MemberProcess, wait_for_members


def test_members_over_ranks_wait_reads_the_run_directory(tmp_path):
    """Done when every member is evaluated; stopped as soon as any rank left a stopped marker (even with members
    still missing)."""
    for k in range(2):
        (tmp_path / MEMBER.format(k)).mkdir()
    (tmp_path / MEMBER.format(0) / "evaluation.json").write_text("{}")
    later = threading.Timer(0.2, lambda: (tmp_path / MEMBER.format(1) / "evaluation.json").write_text("{}"))
    later.start()
    assert wait_for_members(tmp_path, 2, poll_s=0.05) is True
    (tmp_path / STOPPED_RANK.format(1)).write_text("0\n")
    assert wait_for_members(tmp_path, 3, poll_s=0.05) is False  # member-2 never came: rank 1 was stopped


def test_a_member_process_is_one_process_that_shows_progress_only_on_the_jobs_rank_0():
    zero, one = MemberProcess(0, 0), MemberProcess(1, 1)
    assert (zero.size, one.size, one.rank) == (1, 1, 0) and one.local_rank == 1
    assert zero.shows_progress and not one.shows_progress and one.is_main  # it writes its own member's run
