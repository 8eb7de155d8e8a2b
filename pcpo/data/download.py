"""Downloads that are verified, atomic and resumable.

* plain files (``url``, ``torch_hub_file``): streamed with ``requests`` into ``<dest>.part`` (HTTP Range
  resumes it after a dropped connection or an interrupted run), hashed while streaming, checked against
  the catalogue's sha256 and only then renamed onto ``dest``.  A wrong checksum deletes the partial file.
* Hugging Face files and snapshots (``hf_file``, ``hf_snapshot``): ``huggingface_hub`` (which honours
  ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` and its own offline mode) into its cache, at the pinned
  revision; afterwards every LFS file of the snapshot is re-hashed against its sha256 etag, and an
  ``hf_file`` against the catalogue's sha256 when one is pinned.

``PCPO_DATA_ENDPOINT=http://127.0.0.1:PORT`` rewrites ``https://HOST/PATH`` to
``http://127.0.0.1:PORT/HOST/PATH`` (a mirror, or the tests' loopback server).

Every failure a user can act on raises :class:`~pcpo.data.catalogue.DataError` with one line that names
the file, its source and the command that fetches it.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from pcpo.data.catalogue import DataError

log = logging.getLogger(__name__)

CHUNK = 1 << 20
RETRIES = 3
TIMEOUT = (15, 120)  # connect, read (seconds)
_TRUE = ("1", "true", "yes", "on")


# ---------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------

def rewrite_url(url: str) -> str:
    """Apply ``PCPO_DATA_ENDPOINT``: ``https://HOST/PATH`` -> ``ENDPOINT/HOST/PATH``."""
    ep = os.environ.get("PCPO_DATA_ENDPOINT", "").strip().rstrip("/")
    if not ep:
        return url
    parts = urlsplit(url)
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return f"{ep}/{parts.netloc}{rest}"


def hf_endpoint() -> str | None:
    """``HF_ENDPOINT`` as set now (huggingface_hub reads it once at import; we pass it on every call)."""
    ep = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    return ep or None


def hf_offline() -> bool:
    """huggingface_hub's offline mode: ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) now or at import."""
    if any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover
        return False


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(chunk), b""):
            h.update(b)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _reason(err: BaseException) -> str:
    """The innermost cause of a network error, in a few words."""
    seen = err
    while seen.__cause__ is not None or seen.__context__ is not None:
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(seen).split()) or type(seen).__name__
    for pat, short in (("refused", "connection refused"), ("Name or service not known", "DNS lookup failed"),
                       ("Temporary failure in name resolution", "DNS lookup failed"),
                       ("nodename nor servname", "DNS lookup failed"), ("timed out", "timed out"),
                       ("Network is unreachable", "network unreachable")):
        if pat.lower() in text.lower():
            return short
    return text[:160]


# ---------------------------------------------------------------------------
# plain files
# ---------------------------------------------------------------------------

class _Dropped(Exception):
    """The connection ended before the whole file arrived."""


def offline_error(what: str, source: str, command: str, reason: str, alt: str | None = None) -> DataError:
    also = f" (or `{alt}`)" if alt else ""
    return DataError(f"cannot fetch {what} from {source} ({reason}); on a machine with network run `{command}`{also}")


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive flock on ``path`` (created if missing), so two fetches of one file do not interleave."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _stream(session, url: str, part: Path, st, *, what: str, command: str, progress: bool, timeout) -> None:
    """One GET of the rest of ``url`` appended to ``part``; ``st.have`` / ``st.hasher`` follow the part file
    (also when the connection drops), ``st.total`` is the whole size when the server says it."""
    import requests
    import urllib3
    from tqdm.auto import tqdm

    headers = {"Accept-Encoding": "identity"}
    have = st.have
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        r = session.get(url, stream=True, headers=headers, timeout=timeout)
    except requests.exceptions.ConnectionError as e:
        if have:  # reachable a moment ago: treat like a dropped connection
            raise _Dropped(_reason(e)) from e
        raise offline_error(what, url, command, _reason(e)) from e
    except requests.exceptions.Timeout as e:
        raise _Dropped(_reason(e)) from e
    with r:
        if r.status_code == 416 and have:  # nothing left to send: the part file is already whole
            st.total = have
            return
        if r.status_code in (401, 403):
            raise DataError(f"cannot fetch {what} from {url}: access denied (HTTP {r.status_code})")
        if r.status_code == 404:
            raise DataError(f"cannot fetch {what}: {url} does not exist (HTTP 404); the catalogue entry needs a "
                            f"new url")
        if r.status_code not in (200, 206):
            raise DataError(f"cannot fetch {what} from {url}: HTTP {r.status_code} {r.reason}")
        start = 0
        if r.status_code == 206:
            m = re.match(r"bytes (\d+)-", r.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else -1
        if start != have:  # the server ignored the range: start over
            if have:
                log.info("%s: the server does not resume at byte %d; downloading from the start", what, have)
            with open(part, "r+b") as f:
                f.truncate(0)
            st.hasher, st.have, have = hashlib.sha256(), 0, 0
        length = r.headers.get("Content-Length")
        total = st.total = have + int(length) if length is not None and length.isdigit() else None
        try:
            with open(part, "ab") as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                             unit_divisor=1024, desc=Path(what).name[:40],
                                             disable=not progress, leave=False) as bar:
                # read1: whatever has arrived (up to CHUNK), so a dropped connection loses no received bytes
                read = getattr(r.raw, "read1", None) or r.raw.read
                for chunk in iter(lambda: read(CHUNK), b""):
                    if chunk:
                        f.write(chunk)
                        st.hasher.update(chunk)
                        st.have = have = have + len(chunk)
                        bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
        except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError,
                requests.exceptions.Timeout, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError) as e:
            raise _Dropped(_reason(e)) from e
    if total is not None and have < total:
        raise _Dropped(f"{have} of {total} bytes")


def download_url(url: str, dest: str | os.PathLike, *, sha256: str | None, size: int | None = None,
                 what: str | None = None, command: str = "pcpo data fetch", progress: bool = True,
                 retries: int = RETRIES, backoff: float = 1.0, timeout=TIMEOUT) -> str:
    """Fetch ``url`` onto ``dest``, verified; returns the file's sha256.

    The bytes go to ``<dest>.part`` (kept across runs, so a later call resumes it with an HTTP Range
    request); a dropped connection is resumed up to ``retries`` times.  Only a file whose sha256 (when
    ``sha256`` is given) and size (when known) match is renamed onto ``dest``.
    """
    import requests

    dest = Path(dest)
    what = what or str(dest)
    src = rewrite_url(url)
    part = dest.with_name(dest.name + ".part")
    if hf_offline() and not (dest.is_file() and sha256 is not None and sha256_file(dest) == sha256):
        raise offline_error(what, src, command, "HF_HUB_OFFLINE is set: no downloads")
    with _locked(part):
        if dest.is_file() and sha256 is not None and sha256_file(dest) == sha256:
            if part.is_file() and part.stat().st_size == 0:
                part.unlink()
            return sha256
        from types import SimpleNamespace

        st = SimpleNamespace(hasher=hashlib.sha256(), have=part.stat().st_size, total=None)
        if st.have:
            with open(part, "rb") as f:
                for b in iter(lambda: f.read(1 << 22), b""):
                    st.hasher.update(b)
            log.info("%s: resuming at byte %d", what, st.have)
        attempt = 0
        with requests.Session() as session:
            while True:
                try:
                    _stream(session, src, part, st, what=what, command=command, progress=progress, timeout=timeout)
                    break
                except _Dropped as e:
                    attempt += 1
                    if attempt > retries:
                        raise DataError(
                            f"download of {what} from {src} kept breaking off ({e}; {st.have} bytes kept in {part}); "
                            f"rerun `{command}` to resume it") from None
                    log.warning("%s: connection dropped (%s) at byte %d; resuming (try %d of %d)", what, e, st.have,
                                attempt, retries)
                    time.sleep(backoff * attempt)
        got, have = st.hasher.hexdigest(), st.have
        bad = None
        if sha256 is not None and got != sha256:
            bad = f"checksum mismatch for {what}: expected sha256 {sha256}, got {got} (source {src})"
        elif size is not None and have != size:
            bad = f"size mismatch for {what}: expected {size} bytes, got {have} (source {src})"
        if bad:
            part.unlink(missing_ok=True)
            raise DataError(bad + "; the partial file was deleted")
        if sha256 is None:
            log.warning("%s: no pinned sha256 in the catalogue; recorded %s", what, got)
        os.replace(part, dest)
        _fsync_dir(dest.parent)
    return got


# ---------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------

def hf_command(repo: str, repo_type: str = "model", filename: str | None = None, revision: str | None = None) -> str:
    cmd = f"hf download {repo}"
    if filename:
        cmd += f" {filename}"
    if repo_type == "dataset":
        cmd += " --repo-type dataset"
    if revision and revision != "main":
        cmd += f" --revision {revision}"
    return cmd


def hf_error(err: BaseException, *, repo: str, repo_type: str = "model", filename: str | None = None,
             revision: str | None = None, command: str | None = None, gated: bool = False,
             alt: str | None = None) -> DataError | None:
    """The one-line :class:`DataError` for a huggingface_hub failure, or None when it is not one we explain."""
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError)

    hub = hf_endpoint() or "https://huggingface.co"
    kind = "datasets/" if repo_type == "dataset" else ""
    what = f"{repo}/{filename}" if filename else repo
    src = f"{hub}/{kind}{repo}"
    cmd = command or hf_command(repo, repo_type, filename, revision)
    login = (f"accept the licence at {src} while logged in, then log in here with `hf auth login` "
             f"(or set HF_TOKEN)")
    if isinstance(err, GatedRepoError) or (gated and isinstance(err, HfHubHTTPError) and getattr(
            getattr(err, "response", None), "status_code", None) in (401, 403)):
        return DataError(f"{what} is a gated repository ({src}): {login}; then run `{cmd}`")
    if isinstance(err, RevisionNotFoundError):
        return DataError(f"{what}: revision {revision!r} does not exist at {src}; fix the catalogue's revision")
    if isinstance(err, RepositoryNotFoundError):
        return DataError(f"{what}: {src} was not found or needs access; check the repository id, and if it is "
                         f"gated {login}")
    status = getattr(getattr(err, "response", None), "status_code", None)
    if isinstance(err, HfHubHTTPError) and status in (401, 403):
        return DataError(f"{what}: access denied by {src} (HTTP {status}); {login}")
    if isinstance(err, HfHubHTTPError) and status == 404:
        return DataError(f"{what}: not found at {src} (HTTP 404); check the file name and revision")
    if isinstance(err, (OfflineModeIsEnabled, LocalEntryNotFoundError)) or hf_offline():
        reason = "HF_HUB_OFFLINE is set" if hf_offline() else _reason(err)
        return offline_error(what, src, cmd, reason, alt)
    try:
        import httpx2 as httpx  # huggingface_hub 2 ships its own fork
    except ImportError:  # pragma: no cover
        import httpx
    if isinstance(err, (httpx.ConnectError, httpx.TimeoutException, ConnectionError)):
        return offline_error(what, src, cmd, _reason(err), alt)
    return None


def verify_snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """Hash every file of a huggingface_hub snapshot folder whose blob is named by a sha256 (LFS files) and
    compare; returns ``{relative path: sha256 or blob id}``.  A mismatch deletes the blob and raises."""
    folder = Path(folder)
    out: dict[str, str] = {}
    log.info("verifying the files of %s against their sha256", folder)
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        blob = Path(os.path.realpath(p))
        oid = blob.name
        if re.fullmatch(r"[0-9a-f]{64}", oid):
            got = sha256_file(blob)
            if got != oid:
                blob.unlink(missing_ok=True)
                raise DataError(f"checksum mismatch for {rel} in {folder}: expected sha256 {oid}, got {got}; "
                                f"the cached blob was deleted, fetch again")
        out[rel] = oid
    return out


def explain_load_failure(err: BaseException, repo: str, *, filename: str | None = None,
                         repo_type: str = "model") -> DataError | None:
    """For a loader (``from_pretrained``) failure on hub id ``repo``: the one-line reason (gated, offline,
    missing) from the huggingface_hub error somewhere in its cause chain, naming the command that fetches
    it (``pcpo data fetch NAME`` when the catalogue has the repository, and ``hf download REPO``)."""
    chain, seen = [], err
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    cmd, alt = hf_command(repo, repo_type, filename), None
    name = catalogue_name_for_repo(repo, filename)
    if name:
        cmd, alt = f"pcpo data fetch {name}", cmd
    for e in chain:
        mapped = hf_error(e, repo=repo, repo_type=repo_type, filename=filename, command=cmd, alt=alt)
        if mapped is not None:
            return mapped
    text = " ".join(str(e) for e in chain)
    if hf_offline() or "cannot find the requested files" in text.lower():
        reason = "HF_HUB_OFFLINE is set" if hf_offline() else "not in the local Hugging Face cache"
        hub = hf_endpoint() or "https://huggingface.co"
        what = f"{repo}/{filename}" if filename else repo
        return offline_error(what, f"{hub}/{'datasets/' if repo_type == 'dataset' else ''}{repo}", cmd, reason, alt)
    return None


def catalogue_name_for_repo(repo: str, filename: str | None = None) -> str | None:
    """The catalogue entry that fetches ``repo`` (``filename`` of it), if any."""
    try:
        from pcpo.data.catalogue import load_catalogue
        from pcpo.data.needs import _hf_entries

        hits = _hf_entries(load_catalogue(), repo, filename)
    except DataError:
        return None
    return hits[0] if hits else None
