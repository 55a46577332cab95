"""``cloudvox doctor``: what a multi-node job depends on, checked on every rank before any work.

Every rank gathers its facts (launcher, rank, local rank, host, the SLURM step's view, the MPI library and
thread level, Horovod's build, h5py's MPI, CUDA and NCCL) and writes them to a file in the job's output folder
(which so proves writable from its node); rank 0 listens on a TCP port the others connect to through the
rendezvous address (MASTER_ADDR, as torch.distributed and torchrun will), then reads every rank's file and
judges. No MPI or process group is needed for the checks themselves: a broken launch (srun without an MPI
plugin, mpi4py built against another MPI) is one of the things they must report, not hang on.

The judgements are pure functions of the gathered records (:func:`findings`), tested without a cluster;
each failure is one line naming the fix. Exit status 2 when any check fails.
"""
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from .launcher import launch_env, mpi_launched

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str  # the check, and what it saw
    fix: str = ""  # one line naming the fix, when not ok

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'} {self.what}" + ("" if self.ok else f": {self.fix}")


# --------------------------------------------------------------------------------------------------------
# facts of one rank
# --------------------------------------------------------------------------------------------------------
def rank_facts(environ: Optional[Mapping[str, str]] = None) -> Dict:
    """What this process sees: launcher, rank, size, local rank, host, SLURM step, MPI, Horovod, h5py, CUDA.
    MPI is initialised only where an MPI launcher started the process: Open MPI aborts a task that srun
    started without an MPI plugin, and that is one of the launches to report."""
    env = os.environ if environ is None else environ
    le = launch_env(env)
    facts = dict(rank=le.rank, size=le.size, local_rank=le.local_rank, launcher=le.launcher,
                 master_addr=le.master_addr, master_port=le.master_port, host=socket.gethostname(), pid=os.getpid(),
                 mpi_launched=mpi_launched(env),
                 slurm=dict((k, env[k]) for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS",
                                                    "SLURM_STEP_NUM_NODES", "SLURM_JOB_NUM_NODES", "SLURM_NTASKS",
                                                    "SLURM_PROCID", "SLURM_STEP_TASKS_PER_NODE") if k in env))
    if facts["mpi_launched"]:
        try:
            from mpi4py import MPI
            names = {MPI.THREAD_SINGLE: "single", MPI.THREAD_FUNNELED: "funneled",
                     MPI.THREAD_SERIALIZED: "serialized", MPI.THREAD_MULTIPLE: "multiple"}
            facts["mpi"] = dict(library=MPI.Get_library_version().splitlines()[0].split(",")[0].strip(),
                                thread=names.get(MPI.Query_thread(), "?"), size=MPI.COMM_WORLD.Get_size(),
                                rank=MPI.COMM_WORLD.Get_rank())
        except ImportError:
            facts["mpi"] = None
    try:
        import horovod.torch as hvd
        facts["horovod"] = dict(mpi=bool(hvd.mpi_built()), gloo=bool(hvd.gloo_built()), nccl=bool(hvd.nccl_built()))
    except ImportError:
        facts["horovod"] = None
    try:
        import h5py
        facts["h5py_mpi"] = bool(h5py.get_config().mpi)
    except ImportError:
        facts["h5py_mpi"] = None
    import torch
    cuda = torch.cuda.is_available()
    facts["cuda"] = dict(devices=torch.cuda.device_count() if cuda else 0,
                         nccl=".".join(map(str, torch.cuda.nccl.version())) if cuda else None)
    return facts


# --------------------------------------------------------------------------------------------------------
# judgements (pure)
# --------------------------------------------------------------------------------------------------------
def findings(records: List[Dict], expected: int, job: str, backend: str, folder: str) -> List[Finding]:
    """Every check over the ranks' ``records`` (one per rank that wrote; ``expected`` ranks launched).
    ``job``: featurize | train; ``backend``: auto | horovod | ddp (train)."""
    out: List[Finding] = []
    records = sorted(records, key=lambda r: r["rank"])
    r0 = records[0] if records else {}
    missing = sorted(set(range(expected)) - {r["rank"] for r in records})
    hosts = sorted({r["host"] for r in records})
    out.append(Finding(not missing, f"{len(records)}/{expected} rank(s) wrote to {folder} from {len(hosts)} host(s) "
                                    f"({', '.join(hosts)})",
                       f"rank(s) {missing} did not: make {folder} a file system every node mounts, writable by the "
                       "job's user" if missing else ""))
    # launcher and the SLURM step as the ranks see them
    launchers = sorted({r["launcher"] for r in records})
    sizes = sorted({r["size"] for r in records})
    slurm = r0.get("slurm", {})
    out.append(Finding(len(launchers) == 1 and sizes == [expected],
                       f"launcher {'/'.join(launchers)}, {'/'.join(map(str, sizes))} rank(s)",
                       "the ranks disagree on who launched them or how many they are: start every rank with one "
                       "launcher (srun, mpirun or torchrun), not nested"))
    step_nodes = int(slurm.get("SLURM_STEP_NUM_NODES", slurm.get("SLURM_JOB_NUM_NODES", len(hosts) or 1)))
    if slurm and records and not missing:
        out.append(Finding(len(hosts) == step_nodes, f"{len(hosts)} host(s) as the ranks see them, {step_nodes} "
                                                     "node(s) in the SLURM step",
                           "ranks on one node report different hostnames, or several nodes the same one: give every "
                           "node its own hostname (the rendezvous and Open MPI's locality use it)"))
    per_host: Dict[str, List[int]] = {}
    for r in records:
        per_host.setdefault(r["host"], []).append(r["local_rank"])
    bad_local = {h: sorted(v) for h, v in per_host.items() if sorted(v) != list(range(len(v)))}
    out.append(Finding(not bad_local, "local ranks per host " + ", ".join(f"{h}: {len(v)}" for h, v in sorted(per_host.items())),
                       f"local ranks {bad_local} are not 0..k-1 on their host: the launcher's local rank variable is "
                       "missing (srun --mpi=pmix, or torchrun's LOCAL_RANK), so ranks would share one GPU"))
    # MPI
    needs_mpi = job == "featurize" or (job == "train" and backend == "horovod")
    if backend == "auto" and job == "train":
        needs_mpi = r0.get("horovod") is not None
    if needs_mpi and expected > 1:
        if not r0.get("mpi_launched"):
            plugin = "srun --mpi=pmix (CLOUDVOX_SRUN_MPI=pmix; srun --mpi=list shows yours)" if slurm else "mpirun -n K"
            out.append(Finding(False, f"{job} needs MPI, and no MPI launcher started the ranks",
                               f"each rank would be an MPI job of its own: start them with {plugin}"))
        elif r0.get("mpi") is None:
            out.append(Finding(False, "mpi4py is not importable", "pip install mpi4py (built against the MPI you launch with)"))
        else:
            mpi_sizes = sorted({(r.get("mpi") or {}).get("size") for r in records})
            out.append(Finding(mpi_sizes == [expected], f"MPI: {r0['mpi']['library']}, thread level "
                                                        f"{r0['mpi']['thread']}, COMM_WORLD size {'/'.join(map(str, mpi_sizes))}",
                               "mpi4py's MPI is not the launcher's: rebuild mpi4py against the MPI that mpirun/srun "
                               "uses (pip install --no-binary mpi4py mpi4py with that MPI's mpicc)"))
    # Horovod
    hv = r0.get("horovod")
    gpus = (r0.get("cuda") or {}).get("devices", 0)
    if job == "train" and backend in ("horovod", "auto") and hv is not None:
        ops = [k for k in ("mpi", "gloo", "nccl") if hv.get(k)]
        ok = bool(hv.get("mpi") or hv.get("gloo")) and not (gpus and not hv.get("nccl"))
        fix = ("Horovod was built without NCCL on a GPU node: rebuild with HOROVOD_GPU_OPERATIONS=NCCL "
               "(or train with --backend ddp)" if gpus and not hv.get("nccl") else
               "Horovod has neither MPI nor Gloo operations: rebuild with HOROVOD_WITH_MPI=1")
        out.append(Finding(ok, f"Horovod operations: {', '.join(ops) or 'none'}", fix))
    elif job == "train" and backend == "horovod":
        out.append(Finding(False, "Horovod is not importable", "bash scripts/setup.sh builds it (or --backend ddp)"))
    # h5py
    if job == "featurize":
        out.append(Finding(True, f"h5py with MPI: {r0.get('h5py_mpi')} (without it rank 0 writes the file alone)"))
    # CUDA / NCCL
    if gpus:
        most = max(len(v) for v in per_host.values()) if per_host else 0
        out.append(Finding(most <= gpus, f"CUDA: {gpus} GPU(s) per node, NCCL {r0['cuda'].get('nccl')}, up to {most} "
                                          "rank(s) per node",
                           f"{most} ranks on a node with {gpus} GPU(s): set --ntasks-per-node to the GPUs per node"))
    else:
        out.append(Finding(True, "CUDA: no GPU (CPU training, gloo)"))
    return out


def rendezvous_finding(master_addr: str, port: Optional[int], failures: Dict[int, str]) -> Finding:
    """Whether every rank reached rank 0's listening port through ``master_addr``."""
    if port is None:
        return Finding(False, f"rendezvous {master_addr}: rank 0 could not listen",
                       "rank 0 cannot open a TCP port: check the node's firewall and the port range")
    if failures:
        text = "; ".join(f"rank {r}: {e}" for r, e in sorted(failures.items()))
        return Finding(False, f"rendezvous {master_addr}:{port} not reached ({text})",
                       "set MASTER_ADDR to a name or address of the first node that every node resolves and "
                       "reaches (and GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME to the interface between the nodes)")
    return Finding(True, f"rendezvous {master_addr} resolves and is reached by every rank")


# --------------------------------------------------------------------------------------------------------
# the exchange through the output folder
# --------------------------------------------------------------------------------------------------------
def run_doctor(folder: Path, job: str = "train", backend: str = "auto", timeout: float = 20.0) -> int:
    """Gather, exchange and judge; rank 0 logs the report. Returns the exit status (0 ok, 2 a check failed)."""
    le = launch_env()
    key = "-".join(str(v) for v in (le.slurm_job_id or "local", os.environ.get("SLURM_STEP_ID", "0"),
                                    os.environ.get("SLURM_RESTART_COUNT", "0")))
    where = Path(folder) / f".cloudvox-doctor-{key}"
    facts = rank_facts()
    port, failures = None, {}
    listener = None
    try:
        where.mkdir(parents=True, exist_ok=True)
        if le.rank == 0:
            listener = socket.socket()
            listener.bind(("", 0))
            listener.listen(max(8, le.size))
            port = listener.getsockname()[1]
            _write(where / "port", json.dumps(port))
        else:
            facts["connect"] = _connect(le.master_addr, where / "port", timeout)
        _write(where / f"rank-{le.rank}.json", json.dumps(facts))
    except OSError as e:
        if le.rank != 0:
            log.critical("cloudvox doctor: rank %d on %s cannot write to %s: %s", le.rank, facts["host"], folder, e)
            return 2
        facts["write_error"] = str(e)
    if le.rank != 0:
        return 0
    records = _gather(where, le.size, timeout)
    if listener is not None:
        listener.close()
    failures = {r["rank"]: r["connect"] for r in records if r.get("connect") not in (None, "ok")}
    report = findings(records, le.size, job, backend, str(folder))
    if "write_error" in facts:
        report.insert(0, Finding(False, f"rank 0 on {facts['host']} cannot write to {folder} ({facts['write_error']})",
                                 "choose an output folder on a shared file system the job's user can write"))
    if le.size > 1:
        report.append(rendezvous_finding(le.master_addr, port, failures))
    try:
        for p in where.glob("*"):
            p.unlink()
        where.rmdir()
    except OSError:
        pass
    for f in report:
        (log.info if f.ok else log.error)("doctor: %s", f.line())
    bad = [f for f in report if not f.ok]
    if bad:
        log.error("doctor: %d check(s) failed: fix them before the job starts (cloudvox doctor runs them again)",
                  len(bad))
    return 2 if bad else 0


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _connect(addr: str, port_file: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while not port_file.exists():
        if time.monotonic() > deadline:
            return f"rank 0 published no port in {timeout:.0f} s"
        time.sleep(0.05)
    port = int(json.loads(port_file.read_text()))
    try:
        ip = socket.gethostbyname(addr)
    except OSError as e:
        return f"{addr} does not resolve ({e})"
    try:
        with socket.create_connection((ip, port), timeout=max(1.0, deadline - time.monotonic())):
            return "ok"
    except OSError as e:
        return f"{addr} ({ip}):{port}: {e}"


def _gather(where: Path, size: int, timeout: float) -> List[Dict]:
    deadline = time.monotonic() + timeout
    records: Dict[int, Dict] = {}
    while True:
        for r in range(size):
            if r not in records and (where / f"rank-{r}.json").exists():
                try:
                    records[r] = json.loads((where / f"rank-{r}.json").read_text())
                except ValueError:
                    pass
        if len(records) == size or time.monotonic() > deadline:
            return list(records.values())
        time.sleep(0.05)
