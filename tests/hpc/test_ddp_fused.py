"""DDP on CPU: the fused allreduce after the backward gives the gradients of DDP's own reducer, with the
trainer's ``meanwhile`` run while it is in flight, and also when that raises (2 processes, gloo over
127.0.0.1, spawned here: no MPI needed)."""
import queue
import time

import pytest
import torch
import torch.multiprocessing as mp

from hpc.distributed import DDPBackend
from hpc.launcher import LaunchEnv
from tests.hpc.test_distributed import free_port


def net():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.SiLU(), torch.nn.Linear(16, 3), torch.nn.Linear(3, 1))
    m[2].weight.requires_grad_(False)  # a frozen parameter: no gradient, not sent
    return m.double()


def worker(rank: int, port: int, out):
    backend = None
    try:
        # one process group for both paths: a second rendezvous on the same port within one process can meet
        # the first one's store still closing (it hung once on a CI machine)
        env = LaunchEnv(rank=rank, size=2, local_rank=rank, launcher="test", master_port=port)
        backend = DDPBackend(env, timeout_minutes=2.0, fused=True)
        grads, calls = {}, []

        def meanwhile():  # what the trainer does there: read the next batch
            calls.append(True)

        def failing():
            raise ValueError("a bad batch")

        for path in ("fused", "reducer", "fused, meanwhile raised"):
            backend.fused = path != "reducer"
            model = net()
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            step_model, _ = backend.wrap(model, opt)
            g = torch.Generator().manual_seed(100 + rank)  # each rank its own batch
            x = torch.randn(7 + rank, 5, generator=g, dtype=torch.float64)
            step_model(x).pow(2).mean().backward()
            if path == "fused, meanwhile raised":  # the collective still completes: no rank left hanging
                with pytest.raises(ValueError):
                    backend.reduce_gradients(model, meanwhile=failing)
            else:
                backend.reduce_gradients(model, meanwhile=meanwhile)
            grads[path] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert len(calls) == 2, calls  # once per reduction, on either path
        ref = grads["reducer"]
        out.put((rank, {f"{path}: {n}": (grads[path][n] - ref[n]).abs().max().item() for path in grads for n in ref
                        if path != "reducer"},
                 {n: g.abs().max().item() for n, g in ref.items()}))
    except Exception as e:  # reported to the test instead of a hung queue
        out.put((rank, repr(e), None))
    finally:
        if backend is not None:
            backend.close()


def collect(procs, out, timeout: float = 300.0):
    """Each worker's result; fails at once, naming the rank, when a worker dies without one."""
    results, deadline = {}, time.monotonic() + timeout
    try:
        while len(results) < len(procs):
            try:
                rank, diff, size = out.get(timeout=2.0)
                results[rank] = (diff, size)
                continue
            except queue.Empty:
                pass
            dead = [r for r, p in enumerate(procs) if r not in results and p.exitcode not in (None, 0)]
            assert not dead, f"rank(s) {dead} died (exit codes {[procs[r].exitcode for r in dead]})"
            assert time.monotonic() < deadline, f"no result from rank(s) {sorted(set(range(len(procs))) - set(results))}"
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return results


@pytest.mark.mpi
def test_fused_allreduce_equals_the_ddp_reducer():
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=worker, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = collect(procs, out)
    for rank, (diff, size) in results.items():
        assert isinstance(diff, dict), f"rank {rank}: {diff}"
        assert {k.split(": ")[1] for k in diff} == {"0.weight", "0.bias", "2.bias", "3.weight", "3.bias"}
        assert len(diff) == 10  # both fused paths
        assert max(diff.values()) < 1e-12  # the same averaged gradients
        assert min(size.values()) > 1e-6  # and real ones
