"""The layering rules: cloudvox never imports MPI, Horovod, torch.distributed or hpc; nothing runs on import."""
import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = ("mpi4py", "horovod", "torch.distributed", "hpc")

CHECK = """
import sys, pkgutil, importlib, cloudvox
for m in pkgutil.walk_packages(cloudvox.__path__, "cloudvox."):
    importlib.import_module(m.name)
print("BAD", [m for m in ("mpi4py", "horovod", "hpc") if m in sys.modules])
"""


def test_cloudvox_sources_import_nothing_parallel():
    for path in (ROOT / "cloudvox").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.relative_to(ROOT)} imports {name}"


def test_importing_every_cloudvox_module_loads_no_mpi_horovod_or_hpc():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, check=True).stdout
    assert "BAD []" in out, out


def test_importing_hpc_starts_nothing():
    out = subprocess.run([sys.executable, "-c", "import hpc, hpc.cli, hpc.featurize, hpc.distributed, sys; "
                          "print('mpi4py.MPI' in sys.modules, 'horovod.torch' in sys.modules)"],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
