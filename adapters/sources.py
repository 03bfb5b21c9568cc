"""Where adapter files come from: local paths under allowed roots, the Hugging Face Hub, S3.

``Fetcher.check`` validates a source URI without touching the network; ``Fetcher.fetch`` returns a
local directory holding the adapter's files. Hub downloads go through ``huggingface_hub`` (its
cache, ``HF_TOKEN``, ``HF_HUB_OFFLINE``); S3 downloads land atomically in the budgeted DiskCache.

Hub fetches resolve the revision to a commit and check the files' sizes before downloading, then
download that commit; a resolved commit is remembered (``hub_resolve_ttl_s``; for ever when the
revision is a commit), so a working-set miss reads the local copy without asking the Hub. Fetches
run in their own small thread pool: a stuck download never starves validation's threads; a time
limit abandons the fetch, and its worker stops at its next progress report or between files.
"""

import asyncio
import concurrent.futures
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from adapters.disk_cache import DiskCache
from adapters.errors import (
    AdapterError,
    AdapterFetchTimeoutError,
    AdapterSourceError,
    InvalidAdapterError,
)
from adapters.spec import AdapterSpec

log = logging.getLogger("adapters.sources")

# What a text LoRA needs; the .bin is fetched too so validation can refuse it by name.
TEXT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")

_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._=+@-]*$")  # one path segment in hf / s3
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,127}$")
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Source:
    """A checked source: ``local`` (``path``), ``hf`` (``repo_id``, ``subfolder``, ``revision``)
    or ``s3`` (``bucket``, ``prefix``)."""

    kind: Literal["local", "hf", "s3"]
    uri: str
    path: Path | None = None
    repo_id: str = ""
    subfolder: str = ""
    revision: str | None = None
    bucket: str = ""
    prefix: str = ""


class _Cancelled(Exception):
    """The fetch was abandoned (time limit): stop the worker thread at the next chance."""


class Fetcher:
    """Checks and fetches adapter sources. Built from plain values (see SourceOptions)."""

    def __init__(
        self,
        *,
        allowed_roots: Sequence[str | Path] = (),
        cache_dir: str | Path,
        cache_max_bytes: int = 20 * 2**30,
        s3_endpoint_url: str | None = None,
        timeout_s: float = 600.0,
        retries: int = 3,
        max_bytes: int = 2 * 2**30,
        backoff_s: float = 0.5,
        hf_cache_dir: str | Path | None = None,
        hub_resolve_ttl_s: float = 300.0,
    ) -> None:
        self.allowed_roots = [Path(os.path.realpath(Path(r).expanduser())) for r in allowed_roots]
        self.cache = DiskCache(cache_dir, cache_max_bytes)
        self.s3_endpoint_url = s3_endpoint_url
        self.timeout_s, self.retries, self.backoff_s = timeout_s, retries, backoff_s
        self.max_bytes = max_bytes
        self.hf_cache_dir = hf_cache_dir  # None: huggingface_hub's own (HF_HUB_CACHE)
        self._s3: Any = None
        self._s3_lock = threading.Lock()
        self.hub_resolve_ttl_s = hub_resolve_ttl_s
        self._commits: dict[tuple[str, str | None], tuple[str, float]] = {}  # -> (commit, until)
        self._pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="adapter-fetch")
        # on_disk's index of the last catalogue it was given: (specs, _s3_where -> names), and
        # each source's _s3_where (() when not S3), so a new catalogue is indexed without checks.
        self._by_where: tuple[Any, dict[tuple[str, ...], list[str]]] = (None, {})
        self._where_of: dict[str, tuple[str, ...]] = {}

    # -- check: syntax and confinement, no network ------------------------------------------------

    def check(self, spec: AdapterSpec) -> Source:
        """Parse and confine ``spec.source``; AdapterSourceError names the adapter and the rule."""
        uri = spec.source

        def bad(why: str) -> AdapterSourceError:
            return AdapterSourceError(f"adapter '{spec.name}': invalid source {uri!r}: {why}")

        if not uri or "\\" in uri or "\x00" in uri or any(c.isspace() for c in uri):
            raise bad("backslashes, NUL and whitespace are not allowed")
        if "?" in uri or "#" in uri:
            raise bad("query strings and fragments are not allowed")
        if "%" in uri:
            raise bad("percent-escapes are not allowed")
        if ".." in uri.split("/"):
            raise bad("'..' segments are not allowed")
        scheme, sep, rest = uri.partition("://")
        if not sep:
            src = self._check_local(spec, uri, bad)
        elif scheme == "file":
            if not rest.startswith("/"):
                raise bad("file:// URIs take no host: use file:///absolute/path")
            src = self._check_local(spec, rest, bad)
        elif scheme in ("hf", "s3") and rest.startswith("/"):
            raise bad(f"{scheme}:// names cannot be absolute paths")
        elif scheme == "hf":
            src = self._check_hf(spec, uri, bad)
        elif scheme == "s3":
            src = self._check_s3(uri, rest, bad)
        else:
            raise bad(f"unsupported scheme '{scheme}' (use a path, file://, hf:// or s3://)")
        if spec.revision is not None and src.kind != "hf":
            raise bad("'revision' applies to hf:// sources only")
        return src

    def _check_local(self, spec: AdapterSpec, path: str, bad: Callable[[str], Exception]) -> Source:
        if not self.allowed_roots:
            raise bad("local sources are disabled (no allowed_roots configured)")
        real = Path(os.path.realpath(Path(path).expanduser()))
        if not self._inside_roots(real):
            raise bad("the path is outside the allowed roots")
        return Source("local", spec.source, path=real)

    def _inside_roots(self, real: Path) -> bool:
        return any(real.is_relative_to(root) for root in self.allowed_roots)

    def _check_hf(self, spec: AdapterSpec, uri: str, bad: Callable[[str], Exception]) -> Source:
        from huggingface_hub import parse_hf_uri

        try:
            hf = parse_hf_uri(uri)
        except ValueError as e:
            raise bad(f"not a Hugging Face model URI ({e})") from None
        if hf.type != "model":
            raise bad(f"hf:// sources must be model repositories, not {hf.type}s")
        sub = hf.path_in_repo.strip("/")
        if sub and not all(_SEGMENT_RE.match(s) for s in sub.split("/")):
            raise bad(f"subfolder {sub!r} must be plain names separated by '/'")
        revision = spec.revision or hf.revision
        if spec.revision and hf.revision and spec.revision != hf.revision:
            raise bad(f"revision {spec.revision!r} conflicts with '@{hf.revision}' in the URI")
        if revision is not None and (not _REVISION_RE.match(revision) or ".." in revision):
            raise bad(f"revision {revision!r} is not a branch, tag or commit name")
        return Source("hf", uri, repo_id=hf.id, subfolder=sub, revision=revision)

    def _check_s3(self, uri: str, rest: str, bad: Callable[[str], Exception]) -> Source:
        bucket, _, prefix = rest.partition("/")
        if not _BUCKET_RE.match(bucket):
            raise bad(f"{bucket!r} is not a valid bucket name")
        prefix = prefix.rstrip("/")
        if prefix and not all(_SEGMENT_RE.match(s) for s in prefix.split("/")):
            raise bad("the key prefix must be plain names separated by single '/'")
        return Source("s3", uri, bucket=bucket, prefix=prefix)

    # -- fetch ------------------------------------------------------------------------------------

    async def fetch(self, spec: AdapterSpec) -> Path:
        """A local directory with the adapter's files; remote sources are downloaded (or cached)."""
        src = self.check(spec)
        if src.kind == "local":
            return await asyncio.to_thread(self._fetch_local, spec, src)
        fetch_one = self._fetch_hf if src.kind == "hf" else self._fetch_s3
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._pool, self._with_retries, spec, src, fetch_one, cancel)
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except TimeoutError:
            cancel.set()  # the worker stops at its next progress report; its temp dir is removed
            raise AdapterFetchTimeoutError(
                f"adapter '{spec.name}': fetching {src.uri} took longer than {self.timeout_s:g}s"
            ) from None

    def _wanted(self, spec: AdapterSpec) -> tuple[str, ...]:
        return (spec.weight_name,) if spec.weight_name else TEXT_FILES

    def _fetch_local(self, spec: AdapterSpec, src: Source) -> Path:
        path = src.path
        assert path is not None
        if not path.exists():
            raise AdapterSourceError(f"adapter '{spec.name}': source path '{path}' does not exist")
        if not path.is_dir():
            raise AdapterSourceError(
                f"adapter '{spec.name}': source '{path}' is a file; give its directory as "
                "source and the file name as weight_name"
            )
        for name in self._wanted(spec):
            f = path / name
            if f.exists() and not self._inside_roots(Path(os.path.realpath(f))):
                raise AdapterSourceError(
                    f"adapter '{spec.name}': '{name}' links outside the allowed roots"
                )
        if spec.weight_name and not (path / spec.weight_name).is_file():
            raise AdapterSourceError(
                f"adapter '{spec.name}': source '{path}' has no file '{spec.weight_name}'"
            )
        return path

    def _with_retries(
        self,
        spec: AdapterSpec,
        src: Source,
        fetch_one: Callable[[AdapterSpec, Source, threading.Event], Path],
        cancel: threading.Event,
    ) -> Path:
        for attempt in range(self.retries + 1):
            try:
                return fetch_one(spec, src, cancel)
            except _Cancelled:
                raise AdapterFetchTimeoutError(f"adapter '{spec.name}': fetch abandoned") from None
            except Exception as e:
                if attempt == self.retries or not _transient(e) or cancel.is_set():
                    raise _source_error(spec, src, e) from e
                delay = self.backoff_s * 2**attempt
                log.warning(
                    "adapter %s: fetching %s failed (%s: %s); retry %d/%d in %.1fs",
                    spec.name, src.uri, type(e).__name__, e, attempt + 1, self.retries, delay,
                )  # fmt: skip
                if cancel.wait(delay):
                    raise AdapterFetchTimeoutError(f"adapter '{spec.name}': fetch abandoned") from e
        raise AssertionError("unreachable")

    def _fetch_hf(self, spec: AdapterSpec, src: Source, cancel: threading.Event) -> Path:
        from huggingface_hub import snapshot_download

        names = self._wanted(spec)
        sub = src.subfolder
        patterns = [f"{sub}/{n}" if sub else n for n in names]
        key = (src.repo_id, src.revision)
        commit, until = self._commits.get(key, ("", 0.0))
        root: str | None = None
        if commit and time.monotonic() < until:
            try:  # resolved recently: the local copy, without asking the Hub
                root = snapshot_download(
                    src.repo_id, revision=commit, allow_patterns=patterns,
                    cache_dir=self.hf_cache_dir, local_files_only=True,
                )  # fmt: skip
            except Exception:
                root = None
        if root is None:
            commit = self._hub_commit(spec, src, patterns) or src.revision or ""
            if cancel.is_set():
                raise _Cancelled()
            log.info("adapter %s: fetching %s (revision %s)", spec.name, src.uri, commit or None)
            root = snapshot_download(
                src.repo_id, revision=commit or None, allow_patterns=patterns,
                cache_dir=self.hf_cache_dir, max_workers=1,
            )  # fmt: skip
        resolved = Path(root).name  # .../snapshots/<commit>
        ttl = float("inf") if _COMMIT_RE.match(src.revision or "") else self.hub_resolve_ttl_s
        self._commits[key] = (resolved, time.monotonic() + ttl)
        path = Path(root) / sub
        present = [path / n for n in names if (path / n).is_file()]
        if not present:
            raise AdapterSourceError(
                f"adapter '{spec.name}': {src.uri} has no {' or '.join(names)}"
                + (f" at revision {src.revision!r}" if src.revision else "")
            )
        total = sum(p.stat().st_size for p in present)
        if total > self.max_bytes:
            raise InvalidAdapterError(
                f"adapter '{spec.name}': {total} bytes at {src.uri} exceed the per-adapter "
                f"cap of {self.max_bytes} bytes"
            )
        log.info("adapter %s: fetched %s at commit %s into %s", spec.name, src.uri, resolved, path)
        return path

    def _hub_commit(self, spec: AdapterSpec, src: Source, patterns: list[str]) -> str | None:
        """The commit ``src.revision`` resolves to, after checking the files' sizes against the
        per-adapter cap (before any download); None when the Hub is not consulted (offline)."""
        from huggingface_hub import HfApi, constants

        if constants.HF_HUB_OFFLINE:
            return None
        info = HfApi().model_info(src.repo_id, revision=src.revision, files_metadata=True)
        total = sum(s.size or 0 for s in info.siblings or [] if s.rfilename in patterns)
        if total > self.max_bytes:
            raise InvalidAdapterError(
                f"adapter '{spec.name}': {total} bytes at {src.uri} exceed the per-adapter "
                f"cap of {self.max_bytes} bytes"
            )
        return info.sha

    def _s3_client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                import boto3
                from botocore.config import Config

                self._s3 = boto3.client(
                    "s3",
                    endpoint_url=self.s3_endpoint_url,
                    config=Config(
                        connect_timeout=min(self.timeout_s, 10),
                        read_timeout=min(self.timeout_s, 60),
                        retries={"mode": "standard", "total_max_attempts": 1},
                    ),
                )
            return self._s3

    def _s3_where(self, src: Source) -> list[str]:
        """The first fields of an S3 entry's disk cache key: which objects, not which version."""
        return ["s3", self.s3_endpoint_url or "", src.bucket, src.prefix]

    def on_disk(self, specs: Mapping[str, AdapterSpec]) -> set[str]:
        """Names in ``specs`` (name -> spec) whose files this node's disk cache holds (some
        version of them), so that loading one reads the disk instead of downloading. S3 sources
        only: hub downloads live in huggingface_hub's own cache, and local paths are read where
        they are. Cost: the entries on disk, plus one pass over ``specs`` when it is a new
        mapping (a catalogue change)."""
        keys = self.cache.keys()
        if not keys:
            return set()
        if self._by_where[0] is not specs:
            if len(self._where_of) > 2 * len(specs) + 1000:
                self._where_of.clear()  # forget sources no longer registered
            index: dict[tuple[str, ...], list[str]] = {}
            for name, spec in specs.items():
                where = self._where_of.get(spec.source)
                if where is None:
                    try:
                        src = self.check(spec)
                    except AdapterError:
                        src = None
                    ok = src is not None and src.kind == "s3"
                    where = self._where_of[spec.source] = tuple(self._s3_where(src)) if ok else ()
                if where:
                    index.setdefault(where, []).append(name)
            self._by_where = (specs, index)
        index = self._by_where[1]
        return {n for k in keys for n in index.get(tuple(k.split("|")[:4]), ())}

    def keep(self, path: Path) -> None:
        """``path`` (what ``fetch`` returned) was unloaded from a replica: mark its disk cache entry
        recently used. On a full cache the copies evicted first are then those of adapters still
        in memory (they need theirs only once they leave it), not the one that just left it."""
        self.cache.touch(path)

    def _fetch_s3(self, spec: AdapterSpec, src: Source, cancel: threading.Event) -> Path:
        s3 = self._s3_client()
        prefix = f"{src.prefix}/" if src.prefix else ""
        listing = s3.list_objects_v2(Bucket=src.bucket, Prefix=prefix, Delimiter="/")
        objects = {o["Key"][len(prefix) :]: o for o in listing.get("Contents", [])}
        names = self._wanted(spec)
        present = [n for n in names if n in objects]
        if not present or (spec.weight_name and spec.weight_name not in objects):
            raise AdapterSourceError(
                f"adapter '{spec.name}': {src.uri} has no {' or '.join(names)}"
            )
        total = sum(objects[n]["Size"] for n in present)
        if total > self.max_bytes:
            raise InvalidAdapterError(
                f"adapter '{spec.name}': {total} bytes at {src.uri} exceed the per-adapter "
                f"cap of {self.max_bytes} bytes"
            )
        # The key names the object versions (ETags): a changed object is a new cache entry.
        key = "|".join(self._s3_where(src) + [f"{n}={objects[n]['ETag']}" for n in present])
        if (hit := self.cache.lookup(key)) is not None:
            log.info("adapter %s: %s from the disk cache", spec.name, src.uri)
            return hit
        tmp = self.cache.new_tmp()
        try:
            progress = _Progress(spec.name, src.uri, total, cancel)
            for n in present:
                s3.download_file(src.bucket, prefix + n, str(tmp / n), Callback=progress)
            return self.cache.commit(key, tmp)
        finally:
            self.cache.discard(tmp)  # gone already after a commit


class _Progress:
    """boto3 transfer callback: logs bytes done / total every 10%, stops a cancelled fetch."""

    def __init__(self, name: str, uri: str, total: int, cancel: threading.Event) -> None:
        self.name, self.uri, self.total, self.cancel = name, uri, max(total, 1), cancel
        self.done, self.logged, self.started = 0, -1, time.monotonic()
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.cancel.is_set():
            raise _Cancelled()
        with self._lock:
            self.done += n
            decile = self.done * 10 // self.total
            if decile > self.logged:
                self.logged = decile
                log.info(
                    "adapter %s: %s %d/%d bytes (%.0f%%) in %.1fs",
                    self.name, self.uri, self.done, self.total, 100 * self.done / self.total,
                    time.monotonic() - self.started,
                )  # fmt: skip


def _transient(e: Exception) -> bool:
    """Worth retrying: network trouble, throttling, server errors. Not: missing, denied, invalid."""
    if isinstance(e, AdapterError):
        return False
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    module = type(e).__module__
    if module.startswith("botocore"):
        from botocore import exceptions as boto

        if isinstance(e, boto.ClientError):
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return status >= 500 or status == 429 or e.response["Error"]["Code"] == "SlowDown"
        return isinstance(e, boto.ConnectionError | boto.HTTPClientError)
    if module.startswith("httpx"):
        import httpx

        return isinstance(e, httpx.TransportError)
    response = getattr(e, "response", None)  # huggingface_hub's HfHubHTTPError
    status = getattr(response, "status_code", None)
    return isinstance(status, int) and (status >= 500 or status == 429)


def _source_error(spec: AdapterSpec, src: Source, e: Exception) -> AdapterError:
    """Turn a library exception into a domain error that names the adapter and what is missing."""
    if isinstance(e, AdapterError):
        return e
    where = f"adapter '{spec.name}': {src.uri}"
    kind = type(e).__name__
    hf_messages = {
        "RepositoryNotFoundError": "repository not found (or private: set HF_TOKEN)",
        "GatedRepoError": "the repository is gated: set HF_TOKEN for an account with access",
        "RevisionNotFoundError": f"revision {src.revision!r} not found",
        "RemoteEntryNotFoundError": "file not found in the repository",
        "EntryNotFoundError": "file not found in the repository",
        "LocalEntryNotFoundError": "not in the local Hugging Face cache, and the Hub cannot be "
        "reached (HF_HUB_OFFLINE, or no network)",
    }
    if kind in hf_messages:
        return AdapterSourceError(f"{where}: {hf_messages[kind]}")
    if type(e).__module__.startswith("botocore"):
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        s3_messages = {
            "NoSuchBucket": f"bucket '{src.bucket}' does not exist",
            "AccessDenied": "access denied (check the S3 credentials)",
            "InvalidAccessKeyId": "the S3 access key is not valid",
            "SignatureDoesNotMatch": "the S3 secret key is not valid",
            "NoSuchKey": "object not found",
            "404": "object not found",
            "403": "access denied (check the S3 credentials)",
        }
        if code in s3_messages:
            return AdapterSourceError(f"{where}: {s3_messages[code]}")
    return AdapterSourceError(f"{where}: fetch failed: {kind}: {e}")
