"""The featurize job's work counter (hpc/comm.py) under mpirun: every number handed out exactly once."""
import json
import subprocess
import sys

import pytest

from tests.hpc.conftest import cloudvox_cmd, mpi_env

pytestmark = pytest.mark.mpi

SCRIPT = """
import json, sys, time
from mpi4py import MPI
from hpc.comm import WorkCounter
comm = MPI.COMM_WORLD
n, depth = int(sys.argv[1]), int(sys.argv[2])
counter = WorkCounter(comm, depth=depth)
mine = []
while True:
    k = counter.next(len(mine), 0)
    if k >= n:
        break
    mine.append(k)
    time.sleep(0.001 * (1 + comm.Get_rank()))  # ranks of different speeds
totals = counter.totals() if comm.Get_rank() == 0 else None
counter.free()
got = comm.gather(mine, root=0)
if comm.Get_rank() == 0:
    print(json.dumps(dict(got=got, totals=totals)))
"""


@pytest.mark.parametrize("ranks,n,depth", [(1, 10, 2), (2, 50, 1), (2, 50, 2), (3, 40, 2), (3, 2, 2)])
def test_every_number_once(tmp_path, ranks, n, depth):
    script = tmp_path / "counter.py"
    script.write_text(SCRIPT)
    cmd = cloudvox_cmd(ranks, "x")[:-2] + [sys.executable, str(script), str(n), str(depth)]
    out = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, timeout=120, cwd=str(tmp_path.parent))
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    numbers = sorted(k for mine in result["got"] for k in mine)
    assert numbers == list(range(n))
    if ranks > 1 and n > 10:
        assert all(result["got"][r] for r in range(ranks))  # every rank worked
    assert result["totals"][0] <= n
