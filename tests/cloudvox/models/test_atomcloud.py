"""AtomCloudNet in float64: invariances, batching, periodic supercells."""
import numpy as np
import pytest
import torch

from cloudvox.data import cloud_item, collate_clouds
from cloudvox.models.atomcloud import AtomCloudNet
from cloudvox.structure import Structure

RTOL = 1e-6


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    net = AtomCloudNet(cutoff=3.0, layers=2, l_max=2, scalars=8, vectors=4, tensors=2, body_features=True)
    return net.double().eval()


def predict(net, structures):
    batch = collate_clouds([cloud_item(k, s.cart_coords, s.numbers, s.lattice, 3.0) for k, s in enumerate(structures)])
    batch = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    with torch.no_grad():
        return net(batch, n_structures=len(structures)).numpy()


def molecule(rng, n=9):
    while True:
        try:
            return Structure.molecule(rng.uniform(0, 3.5, (n, 3)), rng.choice([1, 6, 7, 8], n), id="m")
        except ValueError:
            continue


def test_invariant_to_rotation_reflection_translation_permutation(net, rng):
    m = molecule(rng)
    base = predict(net, [m])[0]
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    variants = [m.rotated(R), m.rotated(-np.eye(3)), m.rotated(np.diag([1.0, 1.0, -1.0])),
                m.translated([3.0, -7.0, 0.5]), m.permuted(rng.permutation(len(m)))]
    for v in variants:
        assert predict(net, [v])[0] == pytest.approx(base, rel=RTOL, abs=1e-12)
    assert abs(base) > 1e-6  # a real number, not a trivially zero output


def test_batching_equals_one_by_one(net, rng):
    mols = [molecule(rng, n) for n in (3, 7, 12, 5)]
    together = predict(net, mols)
    alone = np.array([predict(net, [m])[0] for m in mols])
    np.testing.assert_allclose(together, alone, rtol=1e-12, atol=1e-12)


def test_crystal_and_supercell_give_the_same_energy_per_atom(net):
    s = Structure(["Sr", "Ti", "O", "O", "O"], [[0, 0, 0], [.5, .5, .5], [.5, .5, 0], [.5, 0, .5], [0, .5, .5]],
                  np.eye(3) * 3.9, id="SrTiO3")
    skewed = Structure(["Sr", "Ti"], [[0.1, 0.2, 0.3], [0.6, 0.5, 0.9]],
                       np.array([[3.1, 0, 0], [1.4, 2.9, 0], [-0.6, 0.8, 3.3]]), id="tri")
    for c in (s, skewed):
        e1 = predict(net, [c])[0] / len(c)  # sum pooling: extensive
        e2 = predict(net, [c.supercell([2, 1, 1])])[0] / (2 * len(c))
        e3 = predict(net, [c.supercell([2, 2, 2])])[0] / (8 * len(c))
        assert e2 == pytest.approx(e1, rel=RTOL) and e3 == pytest.approx(e1, rel=RTOL)
        R = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
        assert predict(net, [c.rotated(R)])[0] == pytest.approx(e1 * len(c), rel=RTOL)


@pytest.mark.parametrize("products,receiver", [((), False), ((1, 2), False), ((1, 2), True)])
def test_convolution_is_equivariant_for_every_order(rng, products, receiver):
    """Each order l of a layer's output rotates with its Wigner matrix (float64), for rotations and reflections,
    from an input with orders 0, 1, 2: every tensor-product path is checked, not only the invariant output
    (with and without the many-body products in the scalars, and with receiver factors)."""
    from cloudvox.models.atomcloud import CloudConvolution, rotate_features
    torch.manual_seed(1)
    conv = CloudConvolution({0: 5, 1: 3, 2: 2}, {0: 4, 1: 3, 2: 2}, 2, 8, 16, 4.0, products=products,
                            receiver=receiver).double()
    assert (conv.product_rows > 0) == bool(products)
    if receiver:  # trained factors, not the identity they start as
        with torch.no_grad():
            for w in conv.receiver.values():
                w.normal_()
    net = AtomCloudNet(cutoff=3.0, l_max=2).double()
    m = molecule(rng, 7)
    item = cloud_item(0, m.cart_coords, m.numbers, None, 3.0)
    src, dst = torch.from_numpy(item["edge_src"]), torch.from_numpy(item["edge_dst"])
    assert len(src) > 10
    h = {0: torch.randn(7, 1, 5, dtype=torch.float64), 1: torch.randn(7, 3, 3, dtype=torch.float64),
         2: torch.randn(7, 5, 2, dtype=torch.float64)}

    def layer(positions, feats):
        batch = {"positions": torch.tensor(positions), "edge_src": src, "edge_dst": dst,
                 "edge_shift": torch.zeros(len(src), 3, dtype=torch.float64)}
        sh, basis = net.edges(batch)
        return conv(feats, sh, basis, src, dst)

    out = layer(m.cart_coords, h)
    for R in (np.linalg.qr(rng.normal(size=(3, 3)))[0], -np.eye(3)):
        Rt = torch.from_numpy(R)
        rotated = layer(m.cart_coords @ R.T, rotate_features(h, Rt))
        expected = rotate_features(out, Rt)
        for l in (0, 1, 2):
            assert out[l].abs().max() > 1e-3  # every order is really produced
            np.testing.assert_allclose(rotated[l].detach().numpy(), expected[l].detach().numpy(), rtol=0, atol=1e-10)


def test_property_embedding_starts_from_the_properties():
    from cloudvox.elements import property_weights
    torch.manual_seed(0)
    props = ["row", "group", "X", "radius"]
    net = AtomCloudNet(cutoff=3.0, layers=1, scalars=4, vectors=0, tensors=0, embed=6, embed_properties=props)
    emb = net.embedding
    assert torch.count_nonzero(emb.free.weight) == 0  # the free part starts at zero: properties decide
    z = torch.tensor([8, 16, 72])  # O, S and Hf: two chalcogens, one transition metal
    expect = emb.prior(torch.as_tensor(property_weights(tuple(props)).T[z.numpy()], dtype=torch.float32))
    torch.testing.assert_close(emb(z), expect)
    h = emb(z)
    assert torch.linalg.norm(h[0] - h[1]) < torch.linalg.norm(h[0] - h[2])  # same group: closer embeddings


def test_many_body_products_are_invariant_feed_the_scalars_and_train_every_parameter(rng):
    """``products="all"``: the invariants of the aggregated l > 0 messages join the scalars of every layer, the last
    (scalars-only) layer included, which makes its l > 0 messages for that alone."""
    torch.manual_seed(2)
    net = AtomCloudNet(cutoff=3.0, layers=2, l_max=2, scalars=8, vectors=4, tensors=2, products="all").double()
    assert [b.products for b in net.blocks] == [[1, 2], [1, 2]]
    hidden = AtomCloudNet(cutoff=3.0, layers=2, l_max=2, scalars=8, vectors=4, tensors=2, products="hidden")
    assert [b.products for b in hidden.blocks] == [[1, 2], []]
    with pytest.raises(ValueError, match="products must be one of none, hidden, all"):
        AtomCloudNet(products="yes")
    assert set(net.blocks[-1].mix) == {"0"}  # no l > 0 output channels in the last layer
    m = molecule(rng, 8)
    base = predict(net.eval(), [m])[0]
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    for v in (m.rotated(R), m.rotated(-np.eye(3)), m.permuted(rng.permutation(len(m)))):
        assert predict(net, [v])[0] == pytest.approx(base, rel=RTOL, abs=1e-12)
    batch = collate_clouds([cloud_item(0, m.cart_coords, m.numbers, None, 3.0)])
    batch = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    net.train()
    net(batch, n_structures=1).sum().backward()
    silent = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not silent  # DDP needs every parameter in the graph
    last = net.blocks[-1]
    assert 0 < last.product_rows < last.mix["0"].shape[0]
    with torch.no_grad():
        last.mix["0"][-last.product_rows:] = 0  # drop what the products contribute to the last layer
    assert abs(predict(net.eval(), [m])[0] - base) > 1e-6  # they fed the output


def test_receiver_factors_start_as_identity_then_couple_receiver_and_environment(rng):
    """``receiver=True``: the same predictions as without it at the start (factors of 1), every factor weight gets a
    gradient, and once trained the receiving atom's own scalars change what its aggregated messages contribute
    (invariance kept)."""
    torch.manual_seed(3)
    plain = AtomCloudNet(cutoff=3.0, layers=2, l_max=2, scalars=8, vectors=4, tensors=2).double()
    net = AtomCloudNet(cutoff=3.0, layers=2, l_max=2, scalars=8, vectors=4, tensors=2, receiver=True).double()
    missing, unexpected = net.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(".receiver." in k for k in missing)
    m = molecule(rng, 8)
    base = predict(plain.eval(), [m])[0]
    assert predict(net.eval(), [m])[0] == pytest.approx(base, rel=1e-12)
    batch = collate_clouds([cloud_item(0, m.cart_coords, m.numbers, None, 3.0)])
    batch = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in batch.items()}
    net.train()
    net(batch, n_structures=1).sum().backward()
    grads = [p.grad for n, p in net.named_parameters() if ".receiver." in n]
    assert len(grads) == 2 * 3 - 2 and all(g is not None and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        for n, p in net.named_parameters():
            if ".receiver." in n:
                p.normal_(std=0.3)
    moved = predict(net.eval(), [m])[0]
    assert abs(moved - base) > 1e-6
    R = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    for v in (m.rotated(R), m.rotated(-np.eye(3)), m.permuted(rng.permutation(len(m)))):
        assert predict(net, [v])[0] == pytest.approx(moved, rel=RTOL, abs=1e-12)
