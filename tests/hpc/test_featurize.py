"""The featurize job for real: under mpirun at 1, 2 and 3 ranks, resumed after kill -9, with bad input."""
import json
import subprocess
import time

import numpy as np
import pytest

from cloudvox.descriptors import ReciprocalVoxelizer
from cloudvox.featurefile import FAILED, FeatureFile
from cloudvox.io import read_aflow
from tests.cloudvox.io.test_aflow import GOOD, MALFORMED
from tests.hpc.conftest import assert_same_datasets, cloudvox_cmd, kill_session, mpi_env, run_cloudvox

pytestmark = pytest.mark.mpi

AFLOW = ["--format", "aflow", "--block-size", "16"]


@pytest.fixture(scope="module")
def serial_osrti(tmp_path_factory, request):
    from tests.conftest import fixture_file
    src = fixture_file("aflow", "O-Sr-Ti.jsonl")
    out = tmp_path_factory.mktemp("serial") / "osrti.h5"
    run_cloudvox(0, "featurize", "--input", str(src), "--output", str(out), *AFLOW)
    return src, out


def test_serial_file_holds_the_exact_descriptor(serial_osrti):
    src, out = serial_osrti
    ff = FeatureFile(out)
    structures = read_aflow(src)
    assert ff.n == len(structures) == 135 and (ff.status == 1).all()
    assert ff.species == ["O", "Sr", "Ti"] and ff.ids == [s.id for s in structures]
    vox = ReciprocalVoxelizer(species=tuple(ff.species))
    expected = vox.batch(structures)
    for i in range(0, 135, 7):  # binned from the stored reciprocal set (float16 values: tolerance as documented)
        np.testing.assert_allclose(ff.voxels(i), expected[i], rtol=2 ** -11, atol=1e-5 * expected[i].max())
        pos, z = ff.cloud(i)
        np.testing.assert_allclose(pos, structures[i].cart_coords)
        rs = ff.reciprocal(i)
        assert len(rs.G) == len(vox.reciprocal(structures[i]).G)
    np.testing.assert_array_equal(ff.prop("enthalpy_atom"), [s.props["enthalpy_atom"] for s in structures])
    attrs = ff.attrs()
    assert json.loads(attrs["descriptor"])["sigma"] == 0.1 and json.loads(attrs["units"])["sigma"] == "Angstrom"
    assert attrs["cloudvox_version"] and "featurize" in attrs["command"] and attrs["created"]
    assert not out.with_name(out.name + ".parts").exists() and not out.with_name(out.name + ".part").exists()


@pytest.mark.parametrize("ranks, shards", [(1, "none"), (2, "lzf"), (3, "none")])
def test_same_file_whatever_the_rank_count(serial_osrti, tmp_path, ranks, shards):
    """The same file at any rank count, whether the shards until the merge are compressed or not."""
    src, reference = serial_osrti
    out = tmp_path / "osrti.h5"
    proc = run_cloudvox(ranks, "featurize", "--input", str(src), "--output", str(out), *AFLOW,
                        "--shard-compression", shards)
    assert_same_datasets(out, reference)
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ranks"] == ranks and summary["done"] == 135 and summary["load_imbalance"] >= 1.0
    assert proc.stdout.count('"path"') == 1  # one rank reports


def kill_featurize_when(args, out, ready, poll: float = 0.02, settle: float = 0.0) -> None:
    """Start ``mpirun -n 2 cloudvox ARGS --output OUT``; once ready() (or after 120 s) and ``settle`` seconds,
    kill -9 mpirun and every rank at once."""
    proc = subprocess.Popen(cloudvox_cmd(2, *args, "--output", str(out)), env=mpi_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ready() and proc.poll() is None:
        time.sleep(poll)
    time.sleep(settle)
    kill_session(proc.pid)
    proc.wait()


@pytest.mark.slow
def test_resume_after_kill_minus_9_of_all_ranks(perovskites_path, tmp_path):
    args = ["featurize", "--input", str(perovskites_path), "--format", "aflow", "--block-size", "1"]
    reference = tmp_path / "uninterrupted.h5"
    run_cloudvox(1, *args, "--output", str(reference))
    out = tmp_path / "resumed.h5"
    parts = tmp_path / "resumed.h5.parts"
    kill_featurize_when(args, out, lambda: len(list(parts.glob("block-*.h5"))) >= 30)
    time.sleep(0.5)
    done_before = len(list(parts.glob("block-*.h5")))
    assert not out.exists() and 30 <= done_before < 300, done_before
    rerun = run_cloudvox(2, *args, "--output", str(out))
    assert f"{done_before} already done" in rerun.stderr
    assert_same_datasets(out, reference)
    again = run_cloudvox(2, *args, "--output", str(out))  # a requeued job that finds the file complete
    assert "already complete" in again.stderr


@pytest.mark.slow
def test_kill_minus_9_during_the_merge_then_the_same_command(perovskites_path, tmp_path):
    """Killed while the shards are being merged into OUT.h5.part (a small merge buffer keeps the merge busy
    for a few seconds): the shards are intact, and the same command ends with the uninterrupted datasets."""
    args = ["featurize", "--input", str(perovskites_path), "--format", "aflow", "--block-size", "2",
            "--merge-buffer-mb", "0.001"]
    reference = tmp_path / "uninterrupted.h5"
    run_cloudvox(1, *args, "--output", str(reference))
    out = tmp_path / "resumed.h5"
    part = tmp_path / "resumed.h5.part"
    kill_featurize_when(args, out, part.exists, poll=0.005, settle=0.2)  # killed inside the merge
    assert part.exists() and not out.exists(), "the merge had not started or had already finished"
    assert len(list((tmp_path / "resumed.h5.parts").glob("block-*.h5"))) == 150
    rerun = run_cloudvox(2, *args, "--output", str(out))
    assert "150 already done" in rerun.stderr
    assert_same_datasets(out, reference)


def test_bad_input_is_recorded_and_the_job_goes_on(tmp_path):
    src = tmp_path / "mixed.jsonl"
    entries = [dict(GOOD, auid=f"aflow:good{k}") for k in range(5)] + [e for e, _ in MALFORMED]
    src.write_text("\n".join(json.dumps(e) for e in entries) + "\nnot json at all\n"
                   + json.dumps(dict(GOOD, auid="aflow:last")) + "\n")
    out = tmp_path / "mixed.h5"
    proc = run_cloudvox(2, "featurize", "--input", str(src), "--output", str(out), "--format", "aflow",
                        "--block-size", "3")
    ff = FeatureFile(out)
    fails = ff.failures()
    assert ff.n == len(entries) + 2 and len(fails) == len(MALFORMED) + 1
    for (entry, message), fail in zip(MALFORMED, fails):
        assert fail["id"] == entry["auid"] and message in fail["reason"] and fail["line"] == entries.index(entry) + 1
    assert fails[-1]["line"] == len(entries) + 1 and "invalid JSON" in fails[-1]["reason"]
    assert (ff.status == FAILED).sum() == len(fails) and ff.ids[-1] == "aflow:last"
    assert "aflow:nan" in proc.stderr  # logged
    strict = run_cloudvox(2, "featurize", "--input", str(src), "--output", str(tmp_path / "strict.h5"),
                          "--format", "aflow", "--strict", check=False)
    assert strict.returncode == 1 and (tmp_path / "strict.h5").exists()
    info = run_cloudvox(0, "info", str(out))
    assert "aflow:overlap" in info.stdout and f"{len(fails)} failed" in info.stdout


@pytest.mark.parametrize("extra, message", [
    (["--sigma", "0"], "sigma must be > 0"),
    (["--n", "1"], "n must be an integer >= 2"),
    (["--length", "-3"], "length must be > 0"),
])
def test_invalid_parameters_are_refused(serial_osrti, tmp_path, extra, message):
    src, _ = serial_osrti
    proc = run_cloudvox(2, "featurize", "--input", str(src), "--output", str(tmp_path / "x.h5"), *AFLOW, *extra,
                        check=False)
    assert proc.returncode == 2 and proc.stderr.count(message) == 1  # one line, from one rank
    assert "Traceback" not in proc.stderr


def test_refuses_unwritable_output_and_mismatching_existing_file(serial_osrti, tmp_path):
    src, reference = serial_osrti
    run_cloudvox(2, "featurize", "--input", str(src), "--output", str(tmp_path / "new" / "deeper" / "x.h5"), *AFLOW)
    assert (tmp_path / "new" / "deeper" / "x.h5").is_file()  # the output folder is created
    (tmp_path / "a_file").write_text("")
    proc = run_cloudvox(1, "featurize", "--input", str(src), "--output", str(tmp_path / "a_file" / "x.h5"), *AFLOW,
                        check=False)
    assert proc.returncode == 2 and "cannot create the output folder" in proc.stderr
    out = tmp_path / "x.h5"
    run_cloudvox(1, "featurize", "--input", str(src), "--output", str(out), *AFLOW)
    proc = run_cloudvox(1, "featurize", "--input", str(src), "--output", str(out), *AFLOW, "--sigma", "0.2",
                        check=False)
    assert proc.returncode == 2 and "other parameters" in proc.stderr and "sigma" in proc.stderr
    run_cloudvox(1, "featurize", "--input", str(src), "--output", str(out), *AFLOW, "--sigma", "0.2", "--overwrite")
    assert FeatureFile(out).params["sigma"] == 0.2


def test_a_failing_rank_brings_the_job_down(serial_osrti, tmp_path):
    from cloudvox.io.sources import Source
    from hpc.featurize import FeaturizeJob
    src, _ = serial_osrti
    out = tmp_path / "x.h5"
    parts = tmp_path / "x.h5.parts"
    parts.mkdir()
    job = FeaturizeJob.from_config(dict(input=[str(src)], format="aflow", output=str(out), block_size=16))
    identity = json.loads(json.dumps(job.identity(Source("aflow", [str(src)]))))
    (parts / "manifest.json").write_text(json.dumps(dict(identity=identity, block_size=16)))
    (parts / "block-0000000000-0000000016.h5").write_text("not an HDF5 file")  # a corrupt shard
    t = time.time()
    proc = run_cloudvox(2, "featurize", "--input", str(src), "--output", str(out), *AFLOW, check=False, timeout=120)
    assert proc.returncode != 0 and time.time() - t < 60
    assert "rank 0 failed" in proc.stderr and not out.exists()


def test_absurd_structures_are_refused_by_resource_limits_and_the_job_goes_on(serial_osrti, tmp_path):
    """A parseable but absurd entry (a 3000 A cell: a reciprocal box of terabytes; more atoms than
    cloudvox.structure.MAX_ATOMS) is recorded as a failure with its reason before anything of that size is
    allocated; the other structures are written (mpirun -n 2)."""
    from cloudvox.structure import MAX_ATOMS
    src, _ = serial_osrti
    good = [json.loads(line) for line in open(src)][:20]
    huge_cell = dict(good[0], auid="aflow:huge_cell", geometry=[3000.0, 3000.0, 3000.0, 90, 90, 90],
                     species=["O"], composition=[1], natoms=1, positions_fractional=[[0, 0, 0]])
    rng = np.random.default_rng(0)
    n = MAX_ATOMS + 1
    many = dict(good[0], auid="aflow:too_many_atoms", geometry=[80.0, 80.0, 80.0, 90, 90, 90], species=["O"],
                composition=[n], natoms=n, positions_fractional=rng.uniform(0, 1, (n, 3)).round(6).tolist())
    path = tmp_path / "absurd.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in good[:10] + [huge_cell] + good[10:] + [many]) + "\n")
    out = tmp_path / "absurd.h5"
    run_cloudvox(2, "featurize", "--input", str(path), "--output", str(out), *AFLOW)
    ff = FeatureFile(out)
    assert ff.n == 22 and int((ff.status == FAILED).sum()) == 2
    reasons = {f["id"]: f["reason"] for f in ff.failures()}
    assert "reciprocal box" in reasons["aflow:huge_cell"] and "MAX_BOX_BYTES" in reasons["aflow:huge_cell"]
    assert f"{n} atoms exceed the limit of {MAX_ATOMS}" in reasons["aflow:too_many_atoms"]


@pytest.fixture(scope="module")
def aflow_like(tmp_path_factory):
    """1400 lines of bench/aflow_like.py (seed 0): one malformed entry of each of its 14 kinds."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from aflow_like import MALFORMED, AflowLike
    gen = AflowLike(seed=0)
    path = tmp_path_factory.mktemp("aflow_like") / "aflow_like.jsonl"
    kinds = {}
    with open(path, "w") as fh:
        for k, (line, kind) in enumerate(gen.lines(1400)):
            fh.write(line + "\n")
            if kind:
                kinds[k + 1] = kind  # line number -> kind
    assert sorted(kinds.values()) == sorted(MALFORMED)
    return path, kinds


# words each kind's reason must contain
REASONS = {"nan_coordinate": "non-finite", "inf_coordinate": "non-finite", "non_numeric_coordinate": "not an (n, 3)",
           "zero_volume": "do not form a cell", "negative_length": "cell lengths must be > 0",
           "unknown_element": "unknown element", "composition_mismatch": "expected", "missing_key": "missing keyword",
           "truncated_json": "invalid JSON", "duplicate_auid": "duplicate id", "far_outside_cell": "far outside the cell",
           "overlapping_atoms": "apart", "huge_cell": "MAX_BOX_BYTES", "too_many_atoms": "MAX_ATOMS"}


def test_every_malformed_kind_of_the_aflow_like_mix_is_recorded_and_the_rest_written(aflow_like, tmp_path):
    """Under mpirun -n 2: each of the generator's 14 malformed kinds fails with its reason (the duplicated auid
    names the record it repeats), every other entry is done, and a small merge buffer (one shard per write)
    gives the same datasets as the default one."""
    path, kinds = aflow_like
    out = tmp_path / "mix.h5"
    run_cloudvox(2, "featurize", "--input", str(path), "--output", str(out), *AFLOW)
    ff = FeatureFile(out)
    failures = {f["line"]: f for f in ff.failures()}
    assert set(failures) == set(kinds), (set(failures) ^ set(kinds))
    for line, kind in kinds.items():
        assert REASONS[kind] in failures[line]["reason"], (kind, failures[line]["reason"])
    assert int((ff.status == FAILED).sum()) == len(kinds) and ff.n == 1400
    assert ff.h5.attrs["format_version"] == 2 and "voxels/values" in ff.h5 and ff.h5["voxels/values"].shape == (0,)
    lines = np.asarray(ff.h5["structures/line"][...])
    assert ((ff.status == FAILED) == np.isin(lines, list(kinds))).all()
    small = tmp_path / "small_buffer.h5"
    run_cloudvox(2, "featurize", "--input", str(path), "--output", str(small), *AFLOW, "--merge-buffer-mb", "0.001")
    assert_same_datasets(small, out)


def test_duplicate_ids_are_found_by_id_even_when_hashes_collide(monkeypatch):
    """The merge's duplicate check: a repeated id names its first occurrence; two different ids that share
    a hash are no duplicates of each other, and a repeat of the second names the second."""
    import hpc.featurize as fz
    ids = {0: "a", 1: "b", 2: "c", 3: "a", 4: "d", 5: "c", 6: "b"}
    hashes = {"a": 5, "b": 7, "c": 5, "d": 9}  # a and c collide
    monkeypatch.setattr(fz, "_shard_values", lambda headers: {"id": lambda row: ids[row]})
    headers = [dict(start=0, ids=np.array([hashes[ids[r]] for r in (0, 1, 2)], dtype=np.uint64), id_rows=np.arange(3)),
               dict(start=3, ids=np.array([hashes[ids[r]] for r in (3, 4, 5, 6)], dtype=np.uint64), id_rows=np.arange(4))]
    assert fz._duplicates(headers) == [(3, 0), (5, 2), (6, 1)]
    assert fz._duplicates(headers[:1]) == [] and fz._duplicates([]) == []


def _headers(rng, n_shards):
    """Shard headers as the merge sees them (sizes, failures, ragged rows) for the pure segment plan."""
    from cloudvox.featurefile import RAGGED
    out, start = [], 0
    for _ in range(n_shards):
        size = int(rng.integers(1, 20))
        out.append(dict(start=start, size=size, failures=int(rng.integers(0, 3)), strings={}, props=[], meta={},
                        elements=[], bytes=1, ragged={name: int(rng.integers(0, 50)) for name in RAGGED}))
        start += size
    return out


@pytest.mark.parametrize("n_shards, ranges", [(6, [(0, 2), (2, 6)]), (5, [(0, 5), (5, 5), (5, 5)]),
                                              (4, [(0, 0), (0, 3), (3, 4)]), (3, [(0, 1), (1, 3), (3, 3)])])
def test_segments_tile_every_dataset_and_the_tail_holds_the_closing_rows(rng, n_shards, ranges):
    """Pure: each writer group's segment is a contiguous run of rows of every dataset; together they cover
    the file once; the segment of the last shard also holds the duplicate-id failures and the closing offset."""
    import hpc.featurize as fz
    headers = _headers(rng, n_shards)
    n = sum(h["size"] for h in headers)
    plan = fz._layout_plan(headers, n, extra_failures=2)
    segs = fz._segments(headers, plan, ranges, n_duplicates=2)
    tail = [k for k, s in enumerate(segs) if s["tail"]]
    assert tail == [max(k for k, (a, b) in enumerate(ranges) if b > a)]
    for name, d in plan.items():
        got = [s["rows"][name] for s in segs]
        assert sum(b - a for a, b in got) == d["shape"][0], name
        assert [s["plan"][name]["shape"][0] for s in segs] == [b - a for a, b in got]
    t = segs[tail[0]]
    assert t["rows"]["failures/index"][1] == plan["failures/index"]["shape"][0]
    assert t["rows"]["voxels/index_offsets"][1] == n + 1
    assert all(s["nonempty"] == (s["shards"][1] > s["shards"][0] or s["tail"]) for s in segs)
    with pytest.raises(RuntimeError, match="do not tile"):
        fz._segments(headers, plan, [(0, 1)], n_duplicates=2)


def test_several_writers_write_one_file_of_virtual_datasets(aflow_like, tmp_path):
    """mpirun -n 3 with two writer groups (ranks 0-1 and 2), the aflow-like mix (failures, a duplicate id) and
    a small merge buffer: the file reads as the one-writer file, value for value; its segments sit beside it;
    the same command again finds it complete; the pair moved elsewhere still reads; a missing segment is
    refused by name (not read as zeros), and a one-writer --overwrite leaves no segments behind."""
    import shutil

    import h5py
    path, kinds = aflow_like
    one = tmp_path / "one.h5"
    run_cloudvox(2, "featurize", "--input", str(path), "--output", str(one), *AFLOW, "--merge-writers", "1")
    assert not (tmp_path / "one.h5.segments").exists()
    out = tmp_path / "run" / "mix.h5"
    args = ["featurize", "--input", str(path), "--output", str(out), *AFLOW, "--merge-writers", "2"]
    proc = run_cloudvox(3, *args, "--merge-buffer-mb", "0.001")
    merge = json.loads(proc.stdout.strip().splitlines()[-1])["merge"]
    assert merge["writers"] == 2 and merge["writer_ranks"] == [0, 2] and min(merge["written_bytes"]) > 0
    assert_same_datasets(out, one)
    segments = sorted((tmp_path / "run" / "mix.h5.segments").iterdir())
    assert [p.name for p in segments] == ["segment-0000.h5", "segment-0001.h5"]
    with h5py.File(out, "r") as f:
        assert f["voxels/values"].shape == (0,) and not f["voxels/values"].is_virtual
        assert f["reciprocal/values"].is_virtual and f["structures/status"].is_virtual
        assert {s.file_name for s in f["reciprocal/values"].virtual_sources()} == {
            "mix.h5.segments/segment-0000.h5", "mix.h5.segments/segment-0001.h5"}
    assert FeatureFile(out).summary()["size_bytes"] == out.stat().st_size + sum(p.stat().st_size for p in segments)
    again = run_cloudvox(3, *args)
    assert "already complete" in again.stderr and sorted((tmp_path / "run" / "mix.h5.segments").iterdir()) == segments

    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "run", moved)
    out = moved / "mix.h5"
    assert_same_datasets(out, one)
    (moved / "mix.h5.segments" / "segment-0001.h5").unlink()
    with pytest.raises(ValueError, match="segment-0001.h5.*mix.h5.segments/"):
        FeatureFile(out)
    args[4] = str(out)
    refused = run_cloudvox(3, *args, check=False)
    assert refused.returncode == 2 and "--overwrite" in refused.stderr
    run_cloudvox(2, *args, "--merge-writers", "1", "--overwrite")
    assert not (moved / "mix.h5.segments").exists()
    assert_same_datasets(out, one)


def test_a_csv_with_a_header_indexed_in_pieces_gives_the_one_rank_file(tmp_path):
    """qm9pack CSV (a header line, one molecule per line) in two files, the first with blank lines: indexed
    in byte pieces by 3 ranks (cut mid-line), the file is the one rank's, value for value."""
    from cloudvox.io.qm9 import qm9pack_files
    with open(qm9pack_files()[0], encoding="utf-8") as fh:
        lines = [next(fh) for _ in range(61)]
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(lines[0] + "".join(x + ("\n" if k % 7 == 0 else "") for k, x in enumerate(lines[1:31])))
    b.write_text(lines[0] + "".join(lines[31:]))
    one, three = tmp_path / "one.h5", tmp_path / "three.h5"
    args = ["--input", str(a), str(b), "--format", "qm9", "--block-size", "8"]
    run_cloudvox(1, "featurize", *args, "--output", str(one))
    run_cloudvox(3, "featurize", *args, "--output", str(three))
    assert_same_datasets(three, one)
    ff = FeatureFile(three)
    assert ff.n == 60 and (ff.status == 1).all()
    assert ff.h5["structures/line"][30] == 2 and ff.h5["structures/line"][29] > 31  # lines counted per file
