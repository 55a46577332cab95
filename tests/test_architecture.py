"""The layering rules: cloudvox never imports MPI, Horovod, torch.distributed or hpc; nothing runs on import."""
import ast
import re
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


# --------------------------------------------------------------------------------------------------------
# the layers of docs/architecture.md
# --------------------------------------------------------------------------------------------------------
def modules() -> dict:
    """cloudvox module name (without the ``cloudvox.`` prefix; the package itself is ``cloudvox``) -> path."""
    out = {}
    for path in (ROOT / "cloudvox").rglob("*.py"):
        parts = path.relative_to(ROOT / "cloudvox").with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "cloudvox"
        out[name] = path
    return out


def internal_imports(name: str, path: Path, known) -> set:
    """The cloudvox modules that ``name`` imports anywhere in its source (function-level imports included)."""
    package = name if path.name == "__init__.py" else (name.rpartition(".")[0] or "cloudvox")
    pkg = [] if package == "cloudvox" else package.split(".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[:len(pkg) - (node.level - 1)] + (node.module.split(".") if node.module else [])
            elif (node.module or "").split(".")[0] == "cloudvox":
                base = node.module.split(".")[1:]
            else:
                continue
            target = ".".join(base) or "cloudvox"
            subs = [f"{target}.{a.name}" if base else a.name for a in node.names]
            found.update(s for s in subs if s in known)
            if target in known and not all(s in known for s in subs):
                found.add(target)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "cloudvox":
                    found.add(".".join(a.name.split(".")[1:]) or "cloudvox")
    found.discard(name)
    return {m for m in found if m in known}


def layers() -> dict:
    """module pattern -> layer number, read from the table of docs/architecture.md."""
    out = {}
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        m = re.match(r"\|\s*(\d+) [^|]*\|(.*)\|\s*$", line)
        if m:
            for pattern in re.findall(r"`([^`]+)`", m.group(2)):
                out[pattern] = int(m.group(1))
    return out


def layer_of(name: str, table: dict) -> int:
    for pattern, layer in table.items():
        if name == pattern or (pattern.endswith(".*") and (name == pattern[:-2] or name.startswith(pattern[:-1]))):
            return layer
    raise AssertionError(f"cloudvox/{name.replace('.', '/')} is in no layer of docs/architecture.md: add it there")


def test_every_module_imports_only_its_own_layer_or_lower_ones():
    table, known = layers(), modules()
    assert len(table) >= 7, "docs/architecture.md lost its layer table"
    wrong = []
    for name, path in sorted(known.items()):
        mine = layer_of(name, table)
        for dep in sorted(internal_imports(name, path, known)):
            if layer_of(dep, table) > mine:
                wrong.append(f"{name} (layer {mine}) imports {dep} (layer {layer_of(dep, table)})")
    assert not wrong, "\n".join(wrong)


def test_cloudvox_imports_have_no_cycle():
    known = modules()
    graph = {name: internal_imports(name, path, known) for name, path in known.items()}
    for pkg in [n for n in known if known[n].name == "__init__.py"]:  # a package's face may re-export below it
        graph[pkg] = {d for d in graph[pkg] if not d.startswith(pkg + ".")} if pkg != "cloudvox" else set()
    state = {}

    def visit(node, trail):
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(dep):] + [dep]))
            if dep not in state:
                visit(dep, trail + [dep])
        state[node] = 2
    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The checker itself: a layer-0 module importing a workflow is reported."""
    fake = tmp_path / "errors.py"
    fake.write_text("from .runs import train_run\n")
    assert "runs" in internal_imports("errors", fake, modules())
    assert layer_of("runs", layers()) > layer_of("errors", layers())


if __name__ == "__main__":  # the import graph, one line per module
    _known = modules()
    for _name, _path in sorted(_known.items()):
        print(_name, "->", " ".join(sorted(internal_imports(_name, _path, _known))))
