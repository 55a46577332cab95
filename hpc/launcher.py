"""Launcher detection, in one place: which launcher started this process and where it sits in the job.

Every other module asks :func:`launch_env` (rank, size, local rank, master address) or :func:`mpi_launched`
(must mpi4py be importable?); nothing else reads launcher variables. Pure functions of an environment
mapping (``os.environ`` by default), tested with synthetic environments and under the real ``srun``.

Precedence, first match wins:

* torchrun / torch.distributed.launch: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``;
* Open MPI's ``mpirun``: ``OMPI_COMM_WORLD_RANK``, ``_SIZE``, ``_LOCAL_RANK``;
* MPICH / Intel MPI (Hydra): ``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``;
* a task of a SLURM job step (``srun``): ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``. The
  step's task count, not the job's ``SLURM_NTASKS``: a step may run fewer tasks than the job allocated.
  The batch shell itself has ``SLURM_PROCID`` and ``SLURM_NTASKS`` but no ``SLURM_STEP_*``: a command run
  there directly is one process, not rank 0 of ``SLURM_NTASKS``;
* otherwise one process.

The master address (torch.distributed's rendezvous) is ``MASTER_ADDR`` or the first host of the step's
(else the job's) node list; the port ``MASTER_PORT`` or 29500 + job id mod 1000.
"""
import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

# variables set by an MPI launcher before MPI_Init: mpi4py must then be importable (srun --mpi=pmix sets PMIX_RANK)
MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")


@dataclass(frozen=True)
class LaunchEnv:
    rank: int
    size: int
    local_rank: int
    launcher: str  # torchrun | openmpi | mpich | slurm | none
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    slurm_job_id: Optional[str] = None
    slurm_restart_count: int = 0  # > 0 in a requeued job


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: 'gpu[03-05,07],cpu1' -> 'gpu03'."""
    m = re.match(r"([^,\[]+)(\[([^\]]+)\])?", nodelist.strip())
    if not m:
        return nodelist
    prefix, ranges = m.group(1), m.group(3)
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first


def mpi_launched(environ: Optional[Mapping[str, str]] = None) -> bool:
    """Whether an MPI launcher (mpirun, mpiexec, srun --mpi=pmix/pmi2) started this process."""
    env = os.environ if environ is None else environ
    return any(v in env for v in MPI_VARS)


def launch_env(environ: Optional[Mapping[str, str]] = None) -> LaunchEnv:
    """Rank, size, local rank, launcher and rendezvous address of this process (pure function of ``environ``)."""
    env = os.environ if environ is None else environ
    job = env.get("SLURM_JOB_ID")
    port = int(env.get("MASTER_PORT", 29500 + int(job or 0) % 1000))
    nodes = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    addr = env.get("MASTER_ADDR") or (first_host(nodes) if nodes else "127.0.0.1")
    common = dict(master_addr=addr, master_port=port, slurm_job_id=job,
                  slurm_restart_count=int(env.get("SLURM_RESTART_COUNT", 0) or 0))
    if "RANK" in env and "WORLD_SIZE" in env:
        return LaunchEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)), "torchrun", **common)
    if "OMPI_COMM_WORLD_RANK" in env:
        return LaunchEnv(int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                         int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", 0)), "openmpi", **common)
    if "PMI_RANK" in env and "PMI_SIZE" in env:
        local = env.get("MPI_LOCALRANKID", env.get("PMI_LOCAL_RANK", env.get("SLURM_LOCALID", 0)))
        return LaunchEnv(int(env["PMI_RANK"]), int(env["PMI_SIZE"]), int(local), "mpich", **common)
    if "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        return LaunchEnv(int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0)),
                         "slurm", **common)
    return LaunchEnv(0, 1, 0, "none", **common)


def describe(e: LaunchEnv) -> str:
    """One log line: launcher, rank count and the SLURM job with its restart count."""
    text = f"{e.size} rank(s) started by {e.launcher}"
    if e.slurm_job_id:
        text += f"; SLURM job {e.slurm_job_id}, SLURM_RESTART_COUNT={e.slurm_restart_count}"
    return text
