"""A SLURM cluster on localhost for the job-script tests: slurmctld + one slurmd per node from Debian's
``slurm-wlm`` (22.05), no authentication, everything (config, state, spool, logs, PIDs) in one folder.

    cluster = LocalSlurm(folder).start()            # one node: this host, returns once sinfo shows it idle
    cluster = LocalSlurm(folder, nodes=3).start()   # nodes n1, n2, n3, each a slurmd in its own namespaces
    cluster.env                                     # SLURM_CONF=... for sbatch/squeue/scontrol/srun
    cluster.crash("n2"); cluster.start_node("n2")   # a node lost (everything on it dies at once), and back
    cluster.stop()                                  # cancels every job, then stops every daemon

Several nodes are emulated on this machine. Each node's slurmd runs inside its own UTS, mount and PID
namespaces (``unshare --uts --mount --pid --fork --kill-child``): its own hostname ``nX``, its own /proc,
and an /etc/hosts bind-mounted over the system's that names every node as 127.0.0.1 (so that a rendezvous on
the first node, ``MASTER_ADDR=n1``, resolves inside the job). The tasks of a job step are children of that
slurmd, so they see that node's hostname: Open MPI then treats ranks on other nodes as remote (TCP between
nodes, shared memory within one). Every node listens on its own port of 127.0.0.1 (``Port=`` in its
``NodeName`` line) and has its own spool and ``TmpFS`` (the PMIx plugins of two nodes would otherwise
create the same /tmp/spmix_appdir_* and abort). Crashing a node is killing its ``unshare`` process: with
``--kill-child`` its PID namespace dies, with the slurmd, the slurmstepd's and every task on it, as when a
node loses power; the controller marks it DOWN after ``SlurmdTimeout`` and requeues its ``--requeue`` jobs.
Nothing but 127.0.0.1 is ever a target.

Usable by hand too: ``python -m tests.jobs.cluster FOLDER [NODES]`` starts one and prints the SLURM_CONF to
export (Ctrl-C stops it). The system's /etc/slurm is never read or written; /etc/hosts only inside the nodes'
mount namespaces.
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
# what a job on the emulated nodes needs in its environment: ranks on different nodes talk TCP on the
# loopback interface only (Open MPI, gloo, Horovod, NCCL), as between real nodes without InfiniBand
LOOPBACK = dict(OMPI_MCA_btl_tcp_if_include="lo", OMPI_MCA_oob_tcp_if_include="lo", GLOO_SOCKET_IFNAME="lo",
                HOROVOD_GLOO_IFACE="lo", NCCL_SOCKET_IFNAME="lo")


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
    """slurmctld + slurmd's on this machine, configured like a small real cluster (requeue allowed, every node
    with ``cpus`` cores, a default partition), with state under ``folder``.

    ``nodes=1``: one slurmd for this host, under its own name (no namespaces). ``nodes>1``: emulated nodes
    ``n1..nN`` (see the module docstring); the controller runs on this host."""

    SLURMD_TIMEOUT = 10  # s without a node's answer before the controller marks it DOWN (and requeues its jobs)

    def __init__(self, folder, cpus: Optional[int] = None, node: Optional[str] = None, nodes: int = 1):
        self.folder = Path(folder).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        self.host = socket.gethostname().split(".")[0]
        self.emulated = nodes > 1
        self.nodes = [f"n{i + 1}" for i in range(nodes)] if self.emulated else [node or self.host]
        self.node = self.nodes[0]
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
        ports = _free_ports(1 + len(self.nodes))
        ctld_port, node_ports = ports[0], ports[1:]
        per_node = "-%n" if self.emulated else ""
        for node in self.nodes:
            (f / f"spool{per_node.replace('%n', node)}").mkdir(exist_ok=True)
            (f / f"tmp{per_node.replace('%n', node)}").mkdir(exist_ok=True)
        if self.emulated:
            (f / "hosts").write_text("127.0.0.1 localhost " + " ".join(self.nodes) + f" {self.host}\n"
                                     "::1 localhost ip6-localhost ip6-loopback\n")
            node_lines = [f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={n} Port={p} CPUs={self.cpus} "
                          f"RealMemory={_memory_mb()} State=UNKNOWN" for n, p in zip(self.nodes, node_ports)]
        else:
            node_lines = [f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} "
                          "State=UNKNOWN"]
        self.conf.write_text("\n".join([
            "ClusterName=cloudvox-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={node_ports[0]}",
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
            f"SlurmdTimeout={self.SLURMD_TIMEOUT}",
            "MessageTimeout=5",
            "MinJobAge=3600",
            "InactiveLimit=0",
            "JobCompType=jobcomp/none",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            f"StateSaveLocation={f / 'state'}",
            f"SlurmdSpoolDir={f / ('spool' + per_node)}",
            f"TmpFS={f / ('tmp' + per_node)}",
            f"SlurmctldPidFile={f / 'slurmctld.pid'}",
            f"SlurmdPidFile={f / ('slurmd' + per_node + '.pid')}",
            f"SlurmctldLogFile={f / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={f / 'log' / ('slurmd' + per_node + '.log')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            *node_lines,
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    # ------------------------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> "LocalSlurm":
        missing = missing_binaries()
        if missing:
            raise SlurmError(f"SLURM is not installed (missing {', '.join(missing)}): run bash scripts/setup.sh "
                             "(apt-get install slurm-wlm)")
        if self.emulated and shutil.which("unshare") is None:
            raise SlurmError("emulated nodes need unshare (util-linux)")
        self.write_config()
        try:
            self._spawn("slurmctld", [self._exe("slurmctld"), "-D", "-i"])
            for node in self.nodes:
                self.start_node(node, wait=False)
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _exe(name: str) -> str:
        return shutil.which(name) or f"/usr/sbin/{name}"

    def _spawn(self, name: str, argv: List[str]) -> None:
        with open(self.folder / "log" / f"{name}.stdout", "a") as out:
            self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def start_node(self, node: str, wait: bool = True, timeout: float = 60.0) -> None:
        """Start (or restart, after :meth:`crash`) the slurmd of ``node``; with ``wait``, until it is idle."""
        slurmd = [self._exe("slurmd"), "-D", "-N", node]
        if not self.emulated:
            self._spawn("slurmd", slurmd)
        else:
            # inside fresh UTS/mount/PID namespaces: the node's hostname, /proc of its PID namespace, and an
            # /etc/hosts naming every node as 127.0.0.1; exec: slurmd becomes the namespace's init (PID 1)
            inner = (f"hostname {node} && mount -t proc proc /proc && "
                     f"mount --bind {self.folder / 'hosts'} /etc/hosts && exec \"$@\"")
            self._spawn(f"slurmd-{node}", ["unshare", "--uts", "--mount", "--pid", "--fork", "--kill-child",
                                           "--propagation", "private", "bash", "-c", inner, "node", *slurmd])
        if wait:
            self.wait_idle(timeout, nodes=[node])

    def crash(self, node: str) -> None:
        """Lose ``node`` at once: SIGKILL its namespace (slurmd, step daemons and every task on it die together,
        nothing is told). The controller notices after ``SLURMD_TIMEOUT``."""
        p = self.procs.pop(f"slurmd-{node}")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=10)

    def node_states(self) -> Dict[str, str]:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            return {}
        return dict(line.split() for line in r.stdout.splitlines() if line.strip())

    def wait_node_state(self, node: str, states, timeout: float = 120.0) -> str:
        """Wait until sinfo shows ``node`` in one of ``states`` (e.g. {"down", "down*"}); returns it."""
        states = {states} if isinstance(states, str) else set(states)
        deadline = time.time() + timeout
        state = ""
        while time.time() < deadline:
            state = self.node_states().get(node, "")
            if state in states:
                return state
            time.sleep(0.5)
        raise SlurmError(f"node {node} still {state!r} after {timeout:.0f} s (waited for {sorted(states)})")

    def wait_idle(self, timeout: float, nodes: Optional[List[str]] = None) -> None:
        nodes = list(nodes or self.nodes)
        deadline = time.time() + timeout
        states: Dict[str, str] = {}
        while time.time() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise SlurmError(f"{name} exited with {p.returncode}: {self.log_tail(name)}")
            states = self.node_states()
            if all(states.get(n) == "idle" for n in nodes):
                return
            time.sleep(0.2)
        raise SlurmError(f"nodes not idle after {timeout:.0f} s ({states}): {self.log_tail('slurmctld')}")

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.folder / "log" / f"{name}.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        out = self.folder / "log" / f"{name}.stdout"
        text += out.read_text(errors="replace") if out.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by PID (SIGTERM, SIGKILL after 10 s): the nodes first."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--user", str(os.getuid())], env=self.env, capture_output=True, timeout=30)
            deadline = time.time() + 15
            while time.time() < deadline:
                r = subprocess.run(["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING,REQUEUED"], env=self.env,
                                   capture_output=True, text=True, timeout=30)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.2)
        for name in sorted(self.procs, key=lambda n: n == "slurmctld"):
            p = self.procs.pop(name)
            if p.poll() is not None:
                continue
            # an emulated node's unshare dies of SIGTERM and takes its namespace (the slurmd) with it
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
    cluster = LocalSlurm(folder, nodes=int(sys.argv[2]) if len(sys.argv) > 2 else 1).start()
    print(f"export SLURM_CONF={cluster.conf}   # Ctrl-C stops the cluster", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
