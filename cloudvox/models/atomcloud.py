"""AtomCloudNet: point convolutions on the neighbourhood cloud of every atom, with e3nn.

Atom embedding of Z -> K cloud convolutions -> invariant (l = 0) per-atom outputs -> pooling -> MLP head.
A convolution gathers, for every edge i <- j within the cutoff, the tensor product of atom j's features
(orders l = 0 .. l_max) with the spherical harmonics Y(r_ij / |r_ij|), channel-wise ("uvu": each channel
only with itself, far cheaper than fully connected products), weighted per edge by one fused radial network
on a Bessel basis with a smooth polynomial cutoff envelope; the sum over neighbours is followed by a linear
mixing, a gated non-linearity and a residual connection. Invariant to rotations, reflections, translations
and atom permutations by construction.

Inputs (batch keys of :mod:`cloudvox.properties`): positions (A, 3) Angstrom, numbers (A,), atom_structure
(A,), and edges src/dst (E,) with Cartesian image shifts (E, 3), precomputed per structure.
"""
import math
from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .. import properties as K
from ..elements import MAX_Z

EDGE_SRC, EDGE_DST, EDGE_SHIFT = "edge_src", "edge_dst", "edge_shift"


class BesselBasis(nn.Module):
    """sin(k pi r / rc) / r radial basis (n functions) times a smooth envelope that vanishes at rc."""

    def __init__(self, cutoff: float, n: int = 8, p: int = 6):
        super().__init__()
        self.cutoff, self.p = cutoff, p
        self.register_buffer("k", torch.arange(1, n + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff)

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        x = r / self.cutoff
        p = self.p
        env = 1 - (p + 1) * (p + 2) / 2 * x ** p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        return env * (x < 1).to(r.dtype)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """(E,) distances -> (E, n)."""
        r = r.unsqueeze(-1)
        return torch.sin(self.k * r) / r * math.sqrt(2 / self.cutoff) * self.envelope(r)


class Interaction(nn.Module):
    """One cloud convolution: channel-wise tensor product with Y_l, radial weights, linear, gate, residual."""

    def __init__(self, irreps_in, irreps_out, irreps_sh, n_basis: int, radial_hidden: int, avg_neighbors: float):
        super().__init__()
        from e3nn import o3
        from e3nn.nn import FullyConnectedNet, Gate
        mid, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if any(ir_out == ir for _, ir in irreps_out):
                        instructions.append((i, j, len(mid), "uvu", True))
                        mid.append((mul, ir_out))
        irreps_mid = o3.Irreps(mid)
        self.tp = o3.TensorProduct(irreps_in, irreps_sh, irreps_mid, instructions, shared_weights=False,
                                   internal_weights=False)
        self.radial = FullyConnectedNet([n_basis, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)
        scalars = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(m, ir) for m, ir in irreps_out if ir.l > 0])
        gates = o3.Irreps([(gated.num_irreps, "0e")])  # one gate scalar per gated irrep
        self.gate = Gate(scalars, [torch.nn.functional.silu], gates, [torch.sigmoid], gated)
        self.linear = o3.Linear(irreps_mid, self.gate.irreps_in)
        self.self_connection = o3.Linear(irreps_in, self.gate.irreps_out)
        self.norm = 1.0 / math.sqrt(avg_neighbors)
        self.irreps_out = self.gate.irreps_out

    def forward(self, h, sh, basis, src, dst):
        w = self.radial(basis)  # (E, weights): one fused radial network for every path
        msg = self.tp(h[dst], sh, w)  # neighbour j's features with Y(r_ij)
        agg = torch.zeros(h.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device)
        agg.index_add_(0, src, msg)
        return self.self_connection(h) + self.gate(self.linear(agg * self.norm))


class AtomCloudNet(nn.Module):
    """E(3)-invariant regressor on atom clouds.

    Args:
        cutoff: neighbour radius, Angstrom. layers: K convolutions. l_max: highest spherical-harmonic order.
        scalars, vectors, tensors: channels of l = 0, 1, 2 features (orders above l_max are dropped).
        n_basis: radial basis size. radial_hidden: width of the radial network. embed: atom embedding size.
        head: hidden widths of the per-atom MLP. pooling: "sum" (extensive targets), "mean", or "power"
        (the power mean (mean |x|^p)^(1/p) of the original, p = ``power``). avg_neighbors: normalisation.
    """

    def __init__(self, cutoff: float = 3.0, layers: int = 2, l_max: int = 2, scalars: int = 32, vectors: int = 16,
                 tensors: int = 8, n_basis: int = 8, radial_hidden: int = 32, embed: int = 32,
                 head: Sequence[int] = (64,), pooling: str = "sum", power: float = 2.0, avg_neighbors: float = 12.0):
        super().__init__()
        from e3nn import o3
        muls = {0: scalars, 1: vectors, 2: tensors}
        parity = {0: "e", 1: "o", 2: "e"}
        hidden = o3.Irreps([(muls[l], f"{l}{parity[l]}") for l in range(min(l_max, 2) + 1) if muls[l]])
        self.irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.embedding = nn.Embedding(MAX_Z + 1, embed)
        self.basis = BesselBasis(cutoff, n_basis)
        irreps = o3.Irreps(f"{embed}x0e")
        blocks = []
        for _ in range(layers):
            block = Interaction(irreps, hidden, self.irreps_sh, n_basis, radial_hidden, avg_neighbors)
            blocks.append(block)
            irreps = block.irreps_out
        self.blocks = nn.ModuleList(blocks)
        n_scalar = sum(m for m, ir in irreps if ir.l == 0)
        self.scalar_dim = n_scalar
        mlp, d = [], n_scalar
        for w in head:
            mlp += [nn.Linear(d, w), nn.SiLU()]
            d = w
        mlp.append(nn.Linear(d, 1))
        self.head = nn.Sequential(*mlp)
        self.pooling, self.power = pooling, power
        self.config = dict(cutoff=cutoff, layers=layers, l_max=l_max, scalars=scalars, vectors=vectors, tensors=tensors,
                           n_basis=n_basis, radial_hidden=radial_hidden, embed=embed, head=list(head), pooling=pooling,
                           power=power, avg_neighbors=avg_neighbors)

    def forward(self, batch: Dict[str, torch.Tensor], n_structures: Optional[int] = None) -> torch.Tensor:
        """(S,) predictions from a batch dict (positions, numbers, atom_structure, edges)."""
        from e3nn import o3
        pos, z = batch[K.POSITIONS], batch[K.NUMBERS]
        src, dst, shift = batch[EDGE_SRC], batch[EDGE_DST], batch[EDGE_SHIFT]
        vec = pos[dst] + shift.to(pos.dtype) - pos[src]
        r = vec.norm(dim=1)
        sh = o3.spherical_harmonics(self.irreps_sh, vec, normalize=True, normalization="component")
        basis = self.basis(r)
        h = self.embedding(z)
        for block in self.blocks:
            h = block(h, sh, basis, src, dst)
        atom_out = self.head(h[:, :self.scalar_dim]).squeeze(-1)  # the l = 0 channels come first
        owner = batch[K.ATOM_STRUCTURE]
        S = int(n_structures if n_structures is not None else owner.max().item() + 1)
        if self.pooling == "power":
            atom_out = atom_out.abs().clamp_min(1e-12) ** self.power
        out = torch.zeros(S, dtype=atom_out.dtype, device=atom_out.device).index_add_(0, owner, atom_out)
        if self.pooling in ("mean", "power"):
            count = torch.zeros(S, dtype=atom_out.dtype, device=atom_out.device).index_add_(0, owner, torch.ones_like(atom_out))
            out = out / count
        if self.pooling == "power":
            out = out ** (1 / self.power)
        return out


def build_atomcloud(cfg: Optional[Dict] = None) -> AtomCloudNet:
    return AtomCloudNet(**{k: v for k, v in (cfg or {}).items() if k != "name"})
