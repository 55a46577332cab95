"""The featurize merge across nodes: one writer against one writer per node, on the emulated cluster.

Starts the emulated cluster of the multi-node tests (tests/jobs/cluster.py: one slurmd per node in its own
namespaces, Open MPI over TCP on ``lo`` between the nodes), generates N AFLOW-like entries
(bench/aflow_like.py) and runs the job a user runs, ``sbatch --nodes=K --ntasks-per-node=1
jobs/featurize.slurm CONFIG``, for each layout below, interleaved ``--repeats`` times:

* ``1x2``: one node, two ranks (one writer: the file as on one node);
* ``KxN w1``: K nodes, ``--merge-writers 1`` (rank 0 writes every chunk; the other nodes' chunks cross to it);
* ``KxN``: K nodes, the default (one writer per node, virtual datasets over the segments).

Prints one JSON line per figure and layout (medians over the repeats): the merge's wall time, the slowest
writer's write time, bytes written per writer and bytes that crossed between nodes, rank 0's shard-header
read, and each writer's write rate. Every node shares this machine's cores and disk, so the figures show
how the write side is divided, not a cluster's bandwidth.
Usage: python bench/merge_nodes.py [--n 20000] [--repeats 3] [--nodes 2 3] [--workdir out/merge_nodes]
"""
import argparse
import json
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

sys.path.insert(0, str(ROOT))
import yaml  # noqa: E402

from tests.jobs.cluster import LOOPBACK, LocalSlurm  # noqa: E402

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"}
TARGET = 110_000_000  # structures: OMat24's size
NODE_CORES = 128
NODE_WRITE = 1e9  # B/s one writer writes (its file system stream; stated, not measured: this disk is one VM's)
FS_BANDWIDTH = 50e9  # B/s a parallel file system takes from all writers together (stated)
NODE_READ = 1e9  # B/s one node reads its share of the input to index it (stated; twice: two passes)
INPUT_BYTES = 580  # per AFLOW-like entry


def run_job(cluster: LocalSlurm, work: Path, config: Path, nodes: int, tasks: int, extra) -> dict:
    out = work / "features.h5"
    for stale in (out, work / "features.h5.segments", work / "features.h5.parts"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    env = dict(CLOUDVOX_ROOT=str(ROOT), CLOUDVOX_VENV=sys.prefix, HDF5_USE_FILE_LOCKING="FALSE",
               OMPI_MCA_btl_vader_single_copy_mechanism="none", CLOUDVOX_DOCTOR="0", **LOOPBACK)
    job = cluster.sbatch(f"--nodes={nodes}", f"--ntasks-per-node={tasks}", "--cpus-per-task=1", "--time=30",
                         str(ROOT / "jobs" / "featurize.slurm"), str(config), "--output", str(out), *extra,
                         cwd=work, env=env)
    state = cluster.wait_for(job, ENDED, timeout=1800)
    log = "".join(p.read_text(errors="replace") for p in sorted(work.glob(f"*-{job}.*")))
    if state != "COMPLETED":
        sys.exit(f"job {job} ended {state}:\n{log[-3000:]}")
    summary = json.loads([line for line in log.splitlines() if line.startswith("{")][-1])
    summary["file_bytes"] = sum(p.stat().st_size for p in [out] + list(work.glob("features.h5.segments/*")))
    return summary


def project(runs: dict, layouts, nodes_measured) -> None:
    """The merge and the job for 110M structures (OMat24's size) on 1, 8 and 64 nodes of NODE_CORES cores,
    from this run's per-rank rates (featurize, shard headers, merge compression: the two-rank layout) and the
    stated bandwidths: the input read twice by the index (every node its share, at NODE_READ), one writer
    bounded by NODE_WRITE, per-node writers by min(nodes NODE_WRITE, FS)."""
    med = statistics.median
    rs = runs["1x2"]
    n = rs[0]["structures"]
    featurize_rate = med(n / sum(r["busy_seconds"]) for r in rs)  # structures per busy second of one rank
    compress_rate = med(sum(r["merge"]["written_bytes"]) / sum(r["merge"]["prep_seconds"]) for r in rs)  # B/s per rank
    header_cost = med(r["merge"]["headers_seconds"] * r["ranks"] / r["merge"]["shards"] for r in rs)  # s per shard
    per_structure = med(r["file_bytes"] / r["structures"] for r in rs)
    total = TARGET * per_structure
    shards = TARGET / 256
    for nodes in (1, 8, 64):
        ranks = nodes * NODE_CORES
        parts = dict(index=2 * TARGET * INPUT_BYTES / min(nodes * NODE_READ, FS_BANDWIDTH),
                     featurize=TARGET / (featurize_rate * ranks),
                     headers=shards * header_cost / ranks, compression=total / (compress_rate * ranks))
        for writers, bandwidth in (("one", NODE_WRITE), ("per node", min(nodes * NODE_WRITE, FS_BANDWIDTH))):
            write = total / bandwidth
            merge = parts["headers"] + max(parts["compression"], write)
            emit("merge_nodes", "projection_110M", (parts["index"] + parts["featurize"] + merge) / 60, "min",
                 nodes=nodes, cores_per_node=NODE_CORES, writers=writers, merge_min=merge / 60,
                 write_min=write / 60, **{f"{k}_min": v / 60 for k, v in parts.items()}, output_TB=total / 1e12,
                 assumed=dict(node_write_GBps=NODE_WRITE / 1e9, fs_GBps=FS_BANDWIDTH / 1e9,
                              node_read_GBps=NODE_READ / 1e9, input_bytes_per_entry=INPUT_BYTES),
                 measured=dict(featurize_per_rank=featurize_rate, compress_MBps_per_rank=compress_rate / 1e6,
                               header_ms_per_shard=header_cost * 1e3, bytes_per_structure=per_structure))


def read_rate(path: Path, picks, passes: int = 3) -> float:
    """Median seconds to read the reciprocal values and atoms of ``picks`` (random structures, fresh handle
    per pass): what a training loader does per item."""
    from cloudvox.featurefile import FeatureFile
    times = []
    for _ in range(passes):
        ff = FeatureFile(path)
        t = time.perf_counter()
        for i in picks:
            ff.ragged("reciprocal/values", int(i))
            ff.cloud(int(i))
        times.append(time.perf_counter() - t)
        ff.close()
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nodes", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=str(ROOT / "out" / "merge_nodes"))
    args = ap.parse_args()
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"aflow_like_{args.n}_s{args.seed}.jsonl"
    if not src.exists():
        import subprocess
        subprocess.run([sys.executable, str(ROOT / "bench" / "aflow_like.py"), "--n", str(args.n), "--seed",
                        str(args.seed), "--out", str(src)], check=True)
    config = work / "featurize.yaml"
    config.write_text(yaml.safe_dump(dict(input=[str(src)], format="aflow", block_size=256, progress_every=0)))
    layouts = [("1x2", 1, 2, [])]
    for k in args.nodes:
        layouts += [(f"{k}x1 w1", k, 1, ["--merge-writers", "1"]), (f"{k}x1", k, 1, [])]
    runs = {name: [] for name, *_ in layouts}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("terminated"))  # stop the cluster on the way out
    cluster = LocalSlurm(work / "slurm", nodes=max(args.nodes), cpus=2).start()
    try:
        for _ in range(args.repeats):
            for name, nodes, tasks, extra in layouts:
                t = time.perf_counter()
                runs[name].append(run_job(cluster, work, config, nodes, tasks, extra))
                print(f"{name}: {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
                if name in ("1x2", f"{max(args.nodes)}x1"):  # kept for the read comparison
                    keep = work / ("one" if name == "1x2" else "virtual")
                    shutil.rmtree(keep, ignore_errors=True)
                    keep.mkdir()
                    for p in work.glob("features.h5*"):
                        shutil.move(str(p), keep / p.name)
    finally:
        cluster.stop()
    med = statistics.median
    for name, nodes, tasks, extra in layouts:
        rs = runs[name]
        m = [r["merge"] for r in rs]
        common = dict(layout=name, nodes=nodes, ranks=nodes * tasks, writers=m[0]["writers"], n=args.n,
                      repeats=args.repeats, structures=rs[0]["structures"])
        emit("merge_nodes", "merge_wall", med(r["merge_seconds"] for r in rs), "s", **common)
        emit("merge_nodes", "slowest_writer_write", med(max(x["write_seconds"]) for x in m), "s", **common)
        emit("merge_nodes", "written_per_writer", [b / 1e6 for b in m[0]["written_bytes"]], "MB", **common)
        emit("merge_nodes", "crossed_between_nodes", med(sum(x["from_other_nodes_bytes"]) for x in m) / 1e6, "MB",
             **common)
        emit("merge_nodes", "writer_rate", med(sum(x["written_bytes"]) / sum(x["write_seconds"]) for x in m) / 1e6,
             "MB/s per writer", **common)
        emit("merge_nodes", "compression_slowest_rank", med(max(x["prep_seconds"]) for x in m), "s", **common)
        emit("merge_nodes", "headers_rank0", med(x["headers_seconds"] for x in m), "s", shards=m[0]["shards"], **common)
        emit("merge_nodes", "file_bytes_per_structure", rs[0]["file_bytes"] / rs[0]["structures"], "B", **common)
        emit("merge_nodes", "job_wall", med(r["wall_seconds"] for r in rs), "s", **common)
    project(runs, layouts, args.nodes)
    read_comparison(work, args.seed, max(args.nodes))


def read_comparison(work: Path, seed: int, segments: int) -> None:
    import numpy as np

    from cloudvox.featurefile import DONE, FeatureFile
    done = np.flatnonzero(FeatureFile(work / "one" / "features.h5").status == DONE)
    picks = np.random.default_rng(seed).choice(done, size=min(len(done), 3000), replace=False)
    one, virtual = read_rate(work / "one" / "features.h5", picks), read_rate(work / "virtual" / "features.h5", picks)
    emit("merge_nodes", "random_read_one_file", len(picks) / one, "structures/s", structures=len(picks))
    emit("merge_nodes", "random_read_virtual", len(picks) / virtual, "structures/s", structures=len(picks),
         segments=segments)
    emit("merge_nodes", "random_read_ratio_virtual_to_one", one / virtual, "x")


if __name__ == "__main__":
    main()
