import numpy as np
import pytest

from cloudvox.neighbors import edge_vectors, neighbor_list


def brute_force(cart, cutoff, lattice=None, reach=4):
    edges = set()
    images = [np.zeros(3, int)] if lattice is None else \
        np.stack(np.meshgrid(*[np.arange(-reach, reach + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    for i in range(len(cart)):
        for j in range(len(cart)):
            for n in images:
                s = np.zeros(3) if lattice is None else n @ lattice
                v = cart[j] + s - cart[i]
                if 1e-6 < np.linalg.norm(v) < cutoff:
                    edges.add((i, j) + tuple(np.round(v, 6) + 0.0))
    return edges


def as_set(cart, src, dst, shift):
    vec = edge_vectors(cart, src, dst, shift)
    return {(int(i), int(j)) + tuple(np.round(v, 6) + 0.0) for i, j, v in zip(src, dst, vec)}


def test_molecule_pairs(rng):
    cart = rng.uniform(0, 4, (12, 3))
    src, dst, shift = neighbor_list(cart, 2.0)
    assert as_set(cart, src, dst, shift) == brute_force(cart, 2.0)
    assert np.all(shift == 0)


@pytest.mark.parametrize("cutoff", [2.5, 3.0, 5.0])
def test_periodic_equals_brute_force_including_images(rng, cutoff):
    for lattice in (np.eye(3) * 2.2, np.array([[3.1, 0, 0], [1.6, 2.9, 0], [-0.8, 0.7, 3.3]]),
                    np.array([[5.0, 0, 0], [4.2, 1.1, 0], [0.3, 0.4, 2.7]])):  # tiny, triclinic, very skewed
        frac = rng.uniform(-0.3, 1.3, (4, 3))  # also atoms outside the cell
        cart = frac @ lattice
        src, dst, shift = neighbor_list(cart, cutoff, lattice)
        got = as_set(cart, src, dst, shift)
        assert len(got) == len(src)  # no duplicates
        assert got == brute_force(cart, cutoff, lattice, reach=6)


def test_large_cells_in_memory_linear_in_atoms():
    """A 2000-atom supercell: every atom keeps the primitive cell's neighbours, and the peak memory stays
    small (a dense (n, n, images, 3) array would need ~2.6 GB here)."""
    import subprocess
    import sys
    code = """
import json, resource, numpy as np
from cloudvox.neighbors import neighbor_list
from cloudvox.structure import Structure
prim = Structure(["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], np.eye(3) * 3.3)
big = prim.supercell([10, 10, 10])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
src, _, _ = neighbor_list(prim.cart_coords, 6.0, prim.lattice)
bsrc, _, _ = neighbor_list(big.cart_coords, 6.0, big.lattice)
grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
deg = np.bincount(bsrc, minlength=len(big))
print(json.dumps([len(big), np.bincount(src).tolist(), sorted(set(deg.tolist())), grew]))
"""
    import json
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    n, prim_deg, big_deg, grew = json.loads(out)
    assert n == 2000 and len(set(prim_deg)) == 1 and big_deg == [prim_deg[0]]
    assert grew < 300, f"neighbour list of 2000 atoms grew the peak memory by {grew:.0f} MB"
