"""AFLUX client: an AFLOW query downloaded page by page, reliably, into the JSONL that featurize reads.

Request: ``<server>?<matchbook>,<keywords>,paging(<page>,<n>),format(json)`` (pages from 1); the answer is a
JSON list of entries (a JSON object of entries is accepted too). The download

* retries connection errors, time-outs, HTTP 5xx and truncated or invalid JSON with exponential back-off
  and jitter, honours ``Retry-After`` on 429 and 503, and gives up after a bounded number of attempts with
  an error naming the page and how to resume;
* is resumable: after each page the output holds whole lines only and ``OUT.progress.json`` records the
  pages done and the output's size; a rerun truncates any partial write, skips finished pages and
  deduplicates by auid;
* validates every entry (required keywords, array shapes, species/composition/natoms consistency) and
  writes rejects with their reason to ``OUT.rejects.jsonl``;
* waits at least ``min_interval`` seconds between requests (polite by default).
"""
import email.utils
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set

from ..errors import UserError
from ..structure import StructureError
from .aflow import structure_from_aflow

log = logging.getLogger(__name__)

DEFAULT_SERVER = "https://aflow.org/API/aflux/"
KEYWORDS = ("auid", "aurl", "compound", "composition", "species", "natoms", "geometry", "positions_fractional",
            "spacegroup_orig", "Pearson_symbol_orig", "enthalpy_atom", "enthalpy_formation_atom")


class FetchError(UserError, RuntimeError):
    """A page that could not be downloaded after every attempt; the message says how to resume."""


class _Retry(Exception):
    def __init__(self, reason: str, wait: Optional[float] = None):
        super().__init__(reason)
        self.wait = wait


def validate_entry(entry) -> Optional[str]:
    """None for an entry that makes a valid structure, else the reason it is rejected: the same checks as
    featurize's reader (:func:`cloudvox.io.aflow.structure_from_aflow`), so nothing fetched is refused later."""
    if isinstance(entry, dict) and not entry.get("auid"):
        return "missing keyword 'auid' (entries are deduplicated by it)"
    try:
        structure_from_aflow(entry)
    except StructureError as e:
        return str(e)
    return None


def aflux_url(server: str, query: str, keywords: Sequence[str], page: int, page_size: int) -> str:
    """The AFLUX request of one page (page numbers from 1)."""
    parts = [query.strip(",")] if query.strip(",") else []
    parts += [k for k in keywords if k and k not in query]
    parts += [f"paging({page},{page_size})", "format(json)"]
    return server + ("" if server.endswith("?") else "?") + urllib.parse.quote(",".join(parts), safe="(),'$!*=:")


def _retry_after(value: Optional[str]) -> Optional[float]:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time()) if when else None


@dataclass
class AfluxClient:
    """Downloads AFLUX pages with retries; all waits go through ``sleep`` (tests may replace it)."""
    server: str = DEFAULT_SERVER
    timeout: float = 60.0  # seconds per request (connect and each read)
    max_attempts: int = 6
    backoff: float = 2.0  # seconds before the second attempt, doubled each time, +-50% jitter
    max_backoff: float = 120.0
    min_interval: float = 1.0  # seconds between requests (politeness)
    seed: Optional[int] = None
    sleep: Callable[[float], None] = time.sleep
    _last: float = field(default=0.0, repr=False)

    def __post_init__(self):
        self._rng = random.Random(self.seed)

    def get_page(self, url: str, page: int) -> List[dict]:
        """The entries of one page; raises FetchError after ``max_attempts`` failed attempts."""
        last_reason = ""
        for attempt in range(1, self.max_attempts + 1):
            wait = self.min_interval - (time.monotonic() - self._last)
            if wait > 0:
                self.sleep(wait)
            self._last = time.monotonic()
            try:
                return self._request(url)
            except _Retry as e:
                last_reason = str(e)
                if attempt == self.max_attempts:
                    break
                delay = e.wait if e.wait is not None else min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) \
                    * self._rng.uniform(0.5, 1.5)
                log.warning("page %d attempt %d/%d failed (%s); retrying in %.1f s", page, attempt,
                            self.max_attempts, e, delay)
                self.sleep(delay)
        raise FetchError(f"page {page} failed after {self.max_attempts} attempts: {last_reason}. "
                         "Run the same command again to resume from this page.")

    def _request(self, url: str) -> List[dict]:
        req = urllib.request.Request(url, headers={"Accept": "application/json", "User-Agent": "cloudvox-fetch"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                body = resp.read()
        except urllib.error.HTTPError as e:
            if e.code == 429 or e.code >= 500:
                raise _Retry(f"HTTP {e.code}", _retry_after(e.headers.get("Retry-After"))) from None
            raise FetchError(f"HTTP {e.code} {e.reason} for {url}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, HTTPException) as e:
            raise _Retry(f"{type(e).__name__}: {getattr(e, 'reason', e)}") from None
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _Retry(f"invalid or truncated JSON ({len(body)} bytes): {e}") from None
        if isinstance(data, dict):  # some AFLUX versions answer {"1 of N": {...}, ...}
            data = list(data.values())
        if not isinstance(data, list):
            raise _Retry(f"unexpected JSON {type(data).__name__}")
        return data


def _read_auids(path: Path) -> Set[str]:
    seen = set()
    if path.exists():
        with open(path, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    seen.add(json.loads(line).get("auid"))
    return seen


def fetch_aflow(query: str, out, keywords: Sequence[str] = KEYWORDS, page_size: int = 1000,
                client: Optional[AfluxClient] = None, max_pages: Optional[int] = None,
                progress: bool = True) -> Dict[str, object]:
    """Download an AFLUX query into ``out`` (JSONL), resumably. Returns a summary.

    Progress lives in ``out.progress.json`` (query, keywords, page size, server, pages done, output size);
    rejects go to ``out.rejects.jsonl``. A rerun with the same query continues; another query refuses.
    """
    client = client or AfluxClient()
    out = Path(out)
    prog_path = out.with_name(out.name + ".progress.json")
    rejects_path = out.with_name(out.name + ".rejects.jsonl")
    job = dict(query=query, keywords=list(keywords), page_size=page_size, server=client.server)
    state = dict(job, pages_done=0, bytes=0, entries=0, duplicates=0, rejected=0, complete=False)
    if prog_path.exists():
        previous = json.loads(prog_path.read_text())
        if {k: previous.get(k) for k in job} != job:
            raise FetchError(f"{prog_path} belongs to another download ({previous.get('query')!r}); remove it "
                             f"and {out} to start over")
        state.update(previous)
        if state["complete"]:
            log.info("%s is complete (%d entries)", out, state["entries"])
            return state
        with open(out, "ab") as fh:  # drop anything written after the last recorded page
            fh.truncate(state["bytes"])
        log.info("resuming %s after page %d (%d entries)", out, state["pages_done"], state["entries"])
    elif out.exists() and out.stat().st_size > 0:
        raise FetchError(f"{out} exists and was not made by this download; choose another --out or remove it")
    else:
        out.write_bytes(b"")
    seen = _read_auids(out)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(unit=" entries", desc="fetch aflow", initial=state["entries"], disable=None)
    page = state["pages_done"] + 1
    try:
        while max_pages is None or page <= max_pages:
            entries = client.get_page(aflux_url(client.server, query, keywords, page, page_size), page)
            lines, rejects = [], []
            for entry in entries:
                reason = validate_entry(entry)
                if reason is not None:
                    rejects.append(dict(page=page, auid=entry.get("auid") if isinstance(entry, dict) else None,
                                        reason=reason, entry=entry))
                elif entry["auid"] in seen:
                    state["duplicates"] += 1
                else:
                    seen.add(entry["auid"])
                    lines.append(json.dumps(entry, separators=(",", ":")) + "\n")
            if rejects:
                with open(rejects_path, "a", encoding="utf-8") as fh:
                    fh.writelines(json.dumps(r) + "\n" for r in rejects)
                for r in rejects:
                    log.warning("rejected entry %s on page %d: %s", r["auid"], page, r["reason"])
            with open(out, "ab") as fh:  # one write of whole lines, then the record of it
                fh.write("".join(lines).encode("utf-8"))
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            state.update(pages_done=page, bytes=size, entries=state["entries"] + len(lines),
                         rejected=state["rejected"] + len(rejects))
            last = len(entries) < page_size
            state["complete"] = last
            _write_json_atomic(prog_path, state)
            if bar is not None:
                bar.update(len(lines))
                bar.set_postfix(page=page)
            if last:
                break
            page += 1
    finally:
        if bar is not None:
            bar.close()
    log.info("%s: %d entries from %d pages, %d duplicates skipped, %d rejected (%s)", out, state["entries"],
             state["pages_done"], state["duplicates"], state["rejected"], rejects_path)
    return state


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
