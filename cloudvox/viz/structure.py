"""Figures of the descriptor for one structure: the cell, the Gaussian density, the reciprocal vectors
coloured by |h|, and the voxel grid per channel. Headless (matplotlib Agg); used by ``cloudvox show``.

Panels: ``cell`` (atoms coloured by element, cell edges), ``density`` (a slice of the real-space density
s(x) = sum_j N(x; mu_j + A n, sigma^2), through the first atom), ``reciprocal`` (the G vectors inside the
grid's domain, coloured and sized by |h| of the total density), ``voxels`` (a projection of each channel's
voxel grid along z: maximum over the axis, square-root colour scale).
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..descriptors import ReciprocalVoxelizer
from ..structure import Structure
from ..errors import ConfigError

PANELS = ("cell", "density", "reciprocal", "voxels")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(structure: Structure) -> Dict[str, Tuple[float, ...]]:
    import matplotlib
    cmap = matplotlib.colormaps["tab10"]
    return {e: cmap(k % 10) for k, e in enumerate(structure.elements)}


def draw_cell(ax, structure: Structure) -> None:
    """3D view of the atoms (coloured by element) and, for a crystal, the cell edges. Axes in Angstrom."""
    colors = _colors(structure)
    xyz = structure.cart_coords
    for e in structure.elements:
        sel = np.array(structure.symbols) == e
        ax.scatter(*xyz[sel].T, s=60, color=colors[e], label=e, depthshade=False, edgecolors="k", linewidths=0.3)
    if structure.is_periodic:
        L = structure.lattice
        corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
        for a in range(8):
            for b in range(a + 1, 8):
                if np.abs(corners[a] - corners[b]).sum() == 1:
                    seg = np.array([corners[a], corners[b]]) @ L
                    ax.plot(*seg.T, color="0.4", lw=0.8)
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_zlabel("z (Å)")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(f"{structure.formula} ({structure.id})", fontsize=9)


def density_slice(structure: Structure, sigma: float, points: int = 120) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(points, points) density (atoms / Angstrom^3) on the plane z = z of the first atom, and the x, y axes.

    Crystals: the plane spans the cell's a and b directions (periodic images included); molecules: a square
    around the atoms.
    """
    z0 = structure.cart_coords[0, 2]
    if structure.is_periodic:  # a square window over the cell's x-y extent, periodic images included
        L = structure.lattice
        corners = np.array([[i, j, 0] for i in (0, 1) for j in (0, 1)], dtype=float) @ L
        lo, hi = corners[:, :2].min(0), corners[:, :2].max(0)
        side = float((hi - lo).max())
        xs, ys = np.linspace(lo[0], lo[0] + side, points), np.linspace(lo[1], lo[1] + side, points)
        plane = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
        plane = np.c_[plane, np.full(len(plane), z0)]
        reach = np.ceil((side + 4 * sigma) * np.linalg.norm(np.linalg.inv(L), axis=0)).astype(int)
        images = np.stack(np.meshgrid(*[np.arange(-r, r + 1) for r in reach], indexing="ij"), -1).reshape(-1, 3) @ L
        centres = (structure.cart_coords[:, None, :] + images[None]).reshape(-1, 3)
        near = np.abs(centres[:, 2] - z0) < 5 * sigma  # only atoms close to the plane show
        window = np.all((centres[:, :2] > lo - 5 * sigma) & (centres[:, :2] < lo + side + 5 * sigma), axis=1)
        centres = centres[near & window]
    else:
        lo, hi = structure.cart_coords.min(0) - 2, structure.cart_coords.max(0) + 2
        xs, ys = np.linspace(lo[0], hi[0], points), np.linspace(lo[1], hi[1], points)
        plane = np.stack(np.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
        plane = np.c_[plane, np.full(len(plane), z0)]
        centres = structure.cart_coords
    rho = np.zeros(len(plane))
    for c in centres:  # a loop over atoms (and images) of a figure, not of the descriptor
        rho += np.exp(-((plane - c) ** 2).sum(1) / (2 * sigma ** 2))
    rho /= (2 * np.pi * sigma ** 2) ** 1.5
    return rho.reshape(points, points), plane[:, 0].reshape(points, points), plane[:, 1].reshape(points, points)


def draw_density(ax, structure: Structure, sigma: float) -> None:
    rho, x, y = density_slice(structure, max(sigma, 0.05))
    im = ax.pcolormesh(x, y, rho, shading="auto", cmap="magma")
    ax.set_aspect("equal")
    ax.set_xlabel("x (Å)")
    ax.set_ylabel("y (Å)")
    ax.set_title(f"density s(x), z = {structure.cart_coords[0, 2]:.2f} Å, σ = {sigma:g} Å", fontsize=9)
    ax.figure.colorbar(im, ax=ax, label="atoms / Å³", shrink=0.8)


def draw_reciprocal(ax, structure: Structure, vox: ReciprocalVoxelizer) -> None:
    """G vectors within the grid's cube, coloured and sized by |h| of the total density."""
    total = ReciprocalVoxelizer(vox.sigma, vox.length, vox.n, vox.mode, channels="total")
    rs = total.reciprocal(structure, dtype=np.float64)
    h = vox.half_width
    inside = np.all(np.abs(rs.G) < h, axis=1)
    G, amp = rs.G[inside], rs.amp[0, inside]
    sc = ax.scatter(*G.T, c=amp, s=4 + 60 * amp / max(amp.max(), 1e-300), cmap="viridis", depthshade=False)
    ax.set_xlim(-h, h)
    ax.set_ylim(-h, h)
    ax.set_zlim(-h, h)
    ax.set_xlabel("Gx (1/Å)")
    ax.set_ylabel("Gy (1/Å)")
    ax.set_zlabel("Gz (1/Å)")
    unit = "1/Å³" if structure.is_periodic else "atoms"
    ax.set_title(f"reciprocal vectors, |h| of the total density ({unit})", fontsize=9)
    ax.figure.colorbar(sc, ax=ax, shrink=0.6, label=f"|h| ({unit})")


def draw_voxels(axes: Sequence, structure: Structure, vox: ReciprocalVoxelizer, rotation=None) -> None:
    """One image per channel: the maximum of the voxel grid along its last axis (square-root colour scale)."""
    names = vox.channel_names([structure])
    grid = vox(structure, rotation)
    vmax = float(grid.max()) if grid.max() > 0 else 1.0
    from matplotlib.colors import PowerNorm
    for k, ax in enumerate(axes):
        if k >= len(names):
            ax.axis("off")
            continue
        proj = grid[k].max(axis=2)
        extent = ([-vox.half_width, vox.half_width] * 2) if vox.mode == "cartesian" else [0, vox.n, 0, vox.n]
        ax.imshow(proj.T, origin="lower", extent=extent, norm=PowerNorm(0.5, 0, vmax), cmap="inferno")
        if vox.mode == "cartesian":
            ax.set_xlabel("Gx (1/Å)")
            ax.set_ylabel("Gy (1/Å)")
        else:
            ax.set_xlabel("|G| bin")
            ax.set_ylabel("θ bin")
        ax.set_title(f"{names[k]}: max over {'Gz' if vox.mode == 'cartesian' else 'φ'}", fontsize=9)


def figure(structure: Structure, vox: ReciprocalVoxelizer, panels: Sequence[str] = PANELS, rotation=None,
           max_channels: int = 4):
    """A matplotlib figure with the requested panels (see :data:`PANELS`)."""
    plt = _pyplot()
    unknown = [p for p in panels if p not in PANELS]
    if unknown:
        raise ConfigError(f"unknown panel(s) {unknown}; choose from {list(PANELS)}")
    n_vox = min(len(vox.channel_names([structure])), max_channels) if "voxels" in panels else 0
    cells = [p for p in panels if p != "voxels"] + ["voxels"] * n_vox
    cols = min(len(cells), 4)
    rows = -(-len(cells) // cols)
    fig = plt.figure(figsize=(4.2 * cols, 3.8 * rows))
    vox_axes = []
    for k, p in enumerate(cells):
        proj = "3d" if p in ("cell", "reciprocal") else None
        ax = fig.add_subplot(rows, cols, k + 1, projection=proj)
        if p == "cell":
            draw_cell(ax, structure)
        elif p == "density":
            draw_density(ax, structure, vox.sigma)
        elif p == "reciprocal":
            draw_reciprocal(ax, structure, vox)
        else:
            vox_axes.append(ax)
    if vox_axes:
        draw_voxels(vox_axes, structure, vox, rotation)
    fig.suptitle(f"{structure.id}: {vox.mode} grid N={vox.n}, L={vox.length:g} Å, σ={vox.sigma:g} Å", fontsize=10)
    fig.tight_layout()
    return fig


def compare_figure(structures: Sequence[Structure], labels: Sequence[str], voxelizers: Sequence[ReciprocalVoxelizer],
                   rotations: Optional[Sequence] = None, channel: int = 0):
    """Small multiples: the voxel projection of one channel for several (structure, voxelizer) pairs."""
    plt = _pyplot()
    k = len(structures)
    fig, axes = plt.subplots(1, k, figsize=(3.6 * k, 3.6), squeeze=False)
    for j, (s, lab, v) in enumerate(zip(structures, labels, voxelizers)):
        draw_voxels([axes[0, j]], s, v, None if rotations is None else rotations[j])
        axes[0, j].set_title(lab, fontsize=9)
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
