"""A single-node SLURM cluster on localhost for the job-script tests: slurmctld + slurmd from Debian's
``slurm-wlm`` (22.05), no authentication, everything (config, state, spool, logs, PIDs) in one folder.

    cluster = LocalSlurm(folder).start()      # returns once sinfo shows the node idle
    cluster.env                               # SLURM_CONF=... for sbatch/squeue/scontrol/srun
    cluster.stop()                            # cancels every job, then stops both daemons by PID

Usable by hand too: ``python -m tests.jobs.cluster FOLDER`` starts one and prints the SLURM_CONF to export
(Ctrl-C stops it). The system's /etc/slurm is never read or written.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")


class SlurmError(RuntimeError):
    pass


def _free_ports(k: int) -> List[int]:
    socks = [socket.socket() for _ in range(k)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _memory_mb() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024 * 9 // 10
    return 1024


def missing_binaries() -> List[str]:
    return [b for b in DAEMONS + CLIENTS if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]


class LocalSlurm:
    """slurmctld + slurmd on this machine, configured like a small real cluster (requeue allowed, one node
    with every core, a default partition), with state under ``folder``."""

    def __init__(self, folder, cpus: Optional[int] = None, node: Optional[str] = None):
        self.folder = Path(folder).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.node = node or socket.gethostname().split(".")[0]
        self.conf = self.folder / "slurm.conf"
        self.procs: Dict[str, subprocess.Popen] = {}

    # ------------------------------------------------------------------------------------------------
    @property
    def env(self) -> Dict[str, str]:
        """The environment for client commands: this cluster's config, nothing from /etc/slurm."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
        for k in [k for k in env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and k != "SLURM_CONF"]:
            del env[k]  # a test run inside a SLURM job must not leak that job's variables into these
        return env

    def write_config(self) -> None:
        f = self.folder
        for sub in ("state", "spool", "log"):
            (f / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text("\n".join([
            "ClusterName=cloudvox-test",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/none",
            "CredType=cred/none",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/backfill",
            "JobRequeue=1",
            "ReturnToService=2",
            "KillWait=5",
            "MinJobAge=3600",
            "InactiveLimit=0",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / 'spool'}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / 'slurmd.pid'}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    # ------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        missing = missing_binaries()
        if missing:
            raise SlurmError(f"SLURM is not installed (missing {', '.join(missing)}): run bash scripts/setup.sh "
                             "(apt-get install slurm-wlm)")
        self.write_config()
        env = self.env
        log = self.folder / "log"
        try:
            for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D", "-N", self.node])):
                exe = shutil.which(name) or f"/usr/sbin/{name}"
                out = open(log / f"{name}.stdout", "w")
                self.procs[name] = subprocess.Popen([exe, *args], env=env, stdout=out, stderr=subprocess.STDOUT,
                                                    start_new_session=True)
                out.close()
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_idle(self, timeout: float) -> None:
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmError(f"{name} exited with {p.returncode}: {self.log_tail(name)}")
            r = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
            state = r.stdout.strip()
            if r.returncode == 0 and state == "idle":
                return
            time.sleep(0.2)
        raise SlurmError(f"node not idle after {timeout:.0f} s (state {state!r}): {self.log_tail('slurmctld')}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.folder / "log" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        out = self.folder / "log" / f"{name}.stdout"
        text += out.read_text(errors="replace") if out.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by PID (SIGTERM, SIGKILL after 10 s)."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True, timeout=30)
            deadline = time.time() + 15
            while time.time() < deadline:
                r = subprocess.run(["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING,REQUEUED"], env=self.env,
                                   capture_output=True, text=True, timeout=30)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.2)
        for name in reversed(DAEMONS):
            p = self.procs.pop(name, None)
            if p is None or p.poll() is not None:
                continue
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    # ------------------------------------------------------------------------------------------------
    def sbatch(self, *args: str, cwd=None, env: Optional[Dict[str, str]] = None) -> int:
        """Submit a job (``sbatch --parsable ARGS``) and return its id."""
        r = subprocess.run(["sbatch", "--parsable", *args], env={**self.env, **(env or {})}, cwd=cwd,
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SlurmError(f"sbatch {' '.join(args)} failed: {r.stderr.strip()}")
        return int(r.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        """``scontrol show job`` as a dict of its KEY=VALUE fields."""
        r = subprocess.run(["scontrol", "-o", "show", "job", str(job_id)], env=self.env, capture_output=True,
                           text=True, timeout=30)
        if r.returncode != 0:
            raise SlurmError(f"scontrol show job {job_id}: {r.stderr.strip()}")
        fields = {}
        for token in r.stdout.split():
            key, eq, value = token.partition("=")
            if eq:
                fields[key] = value
        return fields

    def state(self, job_id: int) -> str:
        return self.job(job_id)["JobState"]

    def wait_for(self, job_id: int, states, timeout: float = 300.0) -> str:
        """Wait until the job is in one of ``states`` (e.g. {"COMPLETED", "FAILED"}); returns that state."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            state = self.state(job_id)
            if state in states:
                return state
            time.sleep(0.2)
        raise SlurmError(f"job {job_id} still {state} after {timeout:.0f} s (waited for {sorted(states)})")

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """A client command (scancel, scontrol, srun ...) against this cluster."""
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "slurm-local")
    cluster = LocalSlurm(folder).start()
    print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops the cluster", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
