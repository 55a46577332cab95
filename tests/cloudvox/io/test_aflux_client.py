"""The AFLUX client against a local HTTP server on 127.0.0.1 that injects faults."""
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cloudvox.io import read_aflow
from cloudvox.io.aflux_client import AfluxClient, FetchError, aflux_url, fetch_aflow, validate_entry

PAGE = 60
PAGING = re.compile(r"paging\((\d+),(\d+)\)")


class FakeAflux:
    """Serves entries in AFLUX pages; ``faults[(page, attempt)]`` names a fault for that request."""

    def __init__(self, entries, faults=None, delay=0.0):
        self.entries, self.faults, self.delay = entries, dict(faults or {}), delay
        self.requests = {}
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                query = self.path.split("?", 1)[1] if "?" in self.path else ""
                from urllib.parse import unquote
                m = PAGING.search(unquote(query))
                page, n = int(m.group(1)), int(m.group(2))
                with outer.lock:
                    attempt = outer.requests[page] = outer.requests.get(page, 0) + 1
                fault = outer.faults.get((page, attempt))
                time.sleep(outer.delay)
                if fault == "hang":
                    time.sleep(3)
                    return
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Retry-After", "1")
                    self.end_headers()
                    return
                if fault == "429":
                    self.send_response(429)
                    self.send_header("Retry-After", "0")
                    self.end_headers()
                    return
                body = json.dumps(outer.entries[(page - 1) * n: page * n]).encode()
                if fault == "invalid":
                    body = b"<html>Service temporarily unavailable</html>"
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "truncated":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/API/aflux/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def source_entries():
    from tests.conftest import fixture_file
    path = fixture_file("aflow", "oxide_perovskites_cP5_300.jsonl")
    keep = ("auid", "aurl", "compound", "composition", "species", "natoms", "geometry", "positions_fractional",
            "spacegroup_orig", "Pearson_symbol_orig", "enthalpy_atom", "enthalpy_formation_atom")
    return [{k: e[k] for k in keep if k in e} for e in map(json.loads, open(path))]


def served(entries):
    """What the server holds: the source, one duplicate across pages and one malformed entry."""
    bad = dict(entries[10], auid="aflow:malformed")
    del bad["positions_fractional"]
    return entries[:150] + [entries[3], bad] + entries[150:]


def fast_client(url, **kw):
    return AfluxClient(server=url, timeout=1.0, max_attempts=4, backoff=0.05, min_interval=0.0, seed=0, **kw)


def test_download_survives_every_fault_and_equals_the_source(tmp_path, source_entries):
    n = len(served(source_entries))
    last = -(-n // PAGE)  # the last page is partial, then the download stops
    faults = {(1, 1): "503", (2, 1): "hang", (3, 1): "truncated", (3, 2): "invalid", (4, 1): "429"}
    out = tmp_path / "perovskites.jsonl"
    waits = []
    with FakeAflux(served(source_entries), faults) as srv:
        client = fast_client(srv.url)
        client.sleep = lambda s: (waits.append(s), time.sleep(min(s, 0.05)))
        summary = fetch_aflow("species(O),nspecies(3),Pearson_symbol_orig('cP5')", out, page_size=PAGE,
                              client=client, progress=False)
        assert srv.requests[1] == 2 and srv.requests[3] == 3 and srv.requests[2] == 2
    assert 1.0 in waits  # Retry-After honoured
    got = [json.loads(line) for line in open(out)]
    assert got == source_entries  # minus the duplicate and the malformed entry, in order
    rejects = [json.loads(line) for line in open(tmp_path / "perovskites.jsonl.rejects.jsonl")]
    assert [r["auid"] for r in rejects] == ["aflow:malformed"] and "positions_fractional" in rejects[0]["reason"]
    assert summary["duplicates"] == 1 and summary["complete"] and summary["pages_done"] == last
    assert len(read_aflow(out)) == len(source_entries)  # featurize reads it


def test_empty_last_page_ends_the_download(tmp_path, source_entries):
    entries = source_entries[:2 * 50]
    with FakeAflux(entries) as srv:
        summary = fetch_aflow("q()", tmp_path / "x.jsonl", page_size=50, client=fast_client(srv.url), progress=False)
        assert srv.requests == {1: 1, 2: 1, 3: 1}
    assert summary["entries"] == 100 and summary["pages_done"] == 3


def test_gives_up_with_a_clear_error_and_resumes(tmp_path, source_entries):
    entries = source_entries[:200]
    out = tmp_path / "x.jsonl"
    faults = {(3, k): "503" for k in range(1, 5)}
    with FakeAflux(entries, faults) as srv:
        client = fast_client(srv.url)
        client.sleep = lambda s: None
        with pytest.raises(FetchError, match="page 3 failed after 4 attempts.*resume"):
            fetch_aflow("q()", out, page_size=50, client=client, progress=False)
        fetch_aflow("q()", out, page_size=50, client=client, progress=False)
        assert srv.requests[1] == 1 and srv.requests[2] == 1  # finished pages are not fetched again
    assert [json.loads(line) for line in open(out)] == entries
    with pytest.raises(FetchError, match="another download"):
        fetch_aflow("other()", out, page_size=50, client=fast_client("http://127.0.0.1:9/"), progress=False)


def test_kill_midway_and_rerun_completes_without_refetching(tmp_path, source_entries):
    out = tmp_path / "x.jsonl"
    entries = source_entries[:300]
    with FakeAflux(entries, delay=0.3) as srv:
        cmd = [str(Path(sys.executable).parent / "cloudvox"), "fetch", "aflow", "--query", "q()", "--out", str(out),
               "--page-size", "25", "--server", srv.url, "--min-interval", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        progress = out.with_name(out.name + ".progress.json")
        deadline = time.time() + 30
        while time.time() < deadline:
            if progress.exists() and json.loads(progress.read_text())["pages_done"] >= 3:
                break
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        done = json.loads(progress.read_text())["pages_done"]
        assert 3 <= done < 12
        with open(out, "a") as fh:
            fh.write('{"auid": "half a line')  # as if killed in the middle of a write
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        assert all(srv.requests[p] == 1 for p in range(1, done + 1))
    assert [json.loads(line) for line in open(out)] == entries


def test_validation_and_url():
    good = {"auid": "a", "species": ["O", "Ti"], "composition": [2, 1], "natoms": 3, "geometry": [3, 3, 3, 90, 90, 90],
            "positions_fractional": [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5]]}
    assert validate_entry(good) is None
    assert "natoms=4 but composition sums to 3" in validate_entry(dict(good, natoms=4))
    assert "does not match species" in validate_entry(dict(good, species=["O"]))
    assert "geometry must be 6 finite numbers" in validate_entry(dict(good, geometry=[3, 3]))
    assert "not a JSON object" in validate_entry([1, 2])
    assert "auid" in validate_entry({k: v for k, v in good.items() if k != "auid"})
    assert "apart" in validate_entry(dict(good, positions_fractional=[[0, 0, 0], [0, 0, 0.01], [0.5, 0, 0.5]]))
    url = aflux_url("https://aflow.org/API/aflux/", "species(O),nspecies(3)", ["auid", "geometry"], 2, 1000)
    assert url.endswith("species(O),nspecies(3),auid,geometry,paging(2,1000),format(json)")
