"""An ensemble's members spread over the ranks (``train.members_over_ranks``): member k trains alone on rank
k % ranks, with no gradient exchange, and the ranks meet once, when every member is done.

The members are ordinary runs (:func:`cloudvox.runs.train_members`); what is parallel lives here: each rank's
:class:`MemberProcess`, the markers by which a stopped rank tells the others, and the wait, which reads the run
directory instead of holding a collective (members that end hours apart would outlast a process group's timeout).
"""
import logging
import time
from pathlib import Path
from typing import Dict

from cloudvox.config import RunConfig

from cloudvox.inference import MEMBER
from cloudvox.runs import finish_ensemble, start_ensemble, train_members
from cloudvox.training.process import SingleProcess

log = logging.getLogger(__name__)

STOPPED_RANK = "stopped-rank-{}"  # rank r was stopped before its members were done


class MemberProcess(SingleProcess):
    """One rank of a job training a model of its own: a single process for its trainer (it writes its own run
    directory), on the device of its local rank, that draws progress only where it is the job's rank 0."""

    def __init__(self, job_rank: int, local_rank: int = 0):
        self.job_rank, self.local_rank = int(job_rank), int(local_rank)

    @property
    def shows_progress(self) -> bool:
        return self.job_rank == 0


def wait_for_members(run_dir: Path, k_members: int, poll_s: float = 2.0) -> bool:
    """Wait, reading the run directory, until every member is evaluated (True) or a rank was stopped (False);
    once all are done the ranks meet within ``poll_s``."""
    while True:
        if any(Path(run_dir).glob(STOPPED_RANK.format("*"))):
            return False
        if all((Path(run_dir) / MEMBER.format(k) / "evaluation.json").exists() for k in range(k_members)):
            return True
        time.sleep(poll_s)


def train_members_over_ranks(cfg: RunConfig, dist, resume: bool = False, on_trainer=None) -> Dict:
    """Train ``train.ensemble`` members, member k on rank k % ranks, then evaluate the ensemble (rank 0 writes);
    returns the summary (``stopped`` when a rank was interrupted: ``--resume`` continues its member)."""
    run_dir = Path(cfg.run_dir)
    k_members = cfg.train.ensemble
    if k_members % dist.size:
        log.warning("%d members over %d ranks: some ranks train one member more, the others wait for them",
                    k_members, dist.size)
    start_ensemble(cfg, dist)
    (run_dir / STOPPED_RANK.format(dist.rank)).unlink(missing_ok=True)  # an earlier job's
    dist.barrier()  # the ranks start together: no rank can see another's stale marker
    mine = [k for k in range(k_members) if k % dist.size == dist.rank]
    stopped = train_members(cfg, MemberProcess(dist.rank, dist.local_rank), resume, on_trainer, mine)
    if stopped is not None:  # the others learn of it from the marker, when their members are done
        (run_dir / STOPPED_RANK.format(dist.rank)).write_text(f"{stopped.get('epoch', '')}\n")
        return stopped
    if not wait_for_members(run_dir, k_members):
        return dict(stopped=True, history=[])  # another rank was stopped: --resume continues its member
    return finish_ensemble(cfg, dist, resume, on_trainer)
