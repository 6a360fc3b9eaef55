"""The remote store: push, pull, list and label versions on S3-compatible object storage.

Reached through fsspec + s3fs (installed by `pip install torchshelf[s3]`), imported only when a
remote is actually used. The layout under `s3://bucket/prefix` mirrors the local store::

    models/<name>/<version>/<file>           every file the manifest lists, byte for byte
    models/<name>/<version>/manifest.json    written last: its existence *is* the version
    models/<name>/<version>/labels.json      optional; `{"labels": {...}}` replaces the
                                             manifest's labels (what `label --remote` writes)

Protocol (no database, no server of our own; only what S3 itself guarantees):

1. Push uploads every file first. Each data object is written with `If-None-Match: *` (create
   only) and carries its sha256 as user metadata (`x-amz-meta-sha256`). If the object already
   exists with the same size and sha256 it is kept (this is how an interrupted push resumes);
   with anything else the push is refused, so a data object under a version is never
   overwritten. Large files go up as multipart uploads, done by s3fs.
2. Then the manifest, also with `If-None-Match: *`. Exactly one writer of a version can create
   it; the loser gets 412 and compares files: same hashes is a no-op, different is refused
   (`AlreadyExists`). Because data objects are create-only, the files a winning manifest names
   are the winner's bytes (or byte-identical ones). Two writers with different bytes that each
   created some of the objects are both refused: nobody wins, nothing becomes visible, and the
   leftovers wait for `gc`.
3. Readers (list, get, pull) only see versions whose manifest exists; objects without a
   manifest (an interrupted or refused push) are invisible. S3 has been strongly
   read-after-write consistent since 2020, so a manifest, once written, is seen by every reader.
4. Pull downloads into a local staging directory, hashing every byte as it is written, and
   commits (one rename) only when every file matches its sha256 and size; a corrupt or
   truncated remote object is an `IntegrityError` and leaves nothing behind. Pulled versions
   are trusted like locally saved ones: the user chose this remote.
5. Labels: `labels.json` is one object holding the whole label set, replaced by
   compare-and-swap (`If-Match: <etag>`, or `If-None-Match: *` when absent) and retried on
   412, so concurrent label changes are not lost. A concurrent `list` reads each version's
   labels object once, so it sees each version's labels entirely before or entirely after a
   change; it is not a snapshot across versions (moving `stage=production` from v1 to v2 is
   two writes, and a list in between may show both or neither; `list --latest` picks one).

Honest limits: conditional writes need a server that implements them (AWS S3 since late
2024, recent MinIO, moto >= 5.1). A server that silently ignores `If-None-Match` degrades step 2
to "last writer wins" between two pushes of one version that start within the same upload
window; auto versions carry 24 random bits, so that needs the same explicit `--version` on
two machines at once. moto checks the condition and stores the object in two steps, so
against moto the window is small but not zero. An interrupted push leaves data objects
without a manifest (and maybe an incomplete multipart upload); they are invisible, a retry of
the same version reuses them, `Remote.leftovers()` lists them and `Remote.gc(older_than)`
(`shelf gc --remote`) deletes those idle for long enough that no push can still be writing.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from . import config, selectors
from .diskspace import ensure_free, is_disk_full, store_full, translate_full
from .errors import (
    AlreadyExists,
    IntegrityError,
    InvalidName,
    ManifestError,
    NotFound,
    RemoteError,
    UsageError,
)
from .index import ModelSummary
from .manifest import (
    MANIFEST,
    FileRecord,
    HashingWriter,
    Manifest,
    Progress,
    check_relpath,
    parse_manifest,
)
from .model import ModelInfo
from .records import Labels, check_labels, merge_labels, pick_prefix
from .remote_limits import (
    S3FS_RETRIES,
    STALL_TIMEOUT_S,
    Stalled,
    Watchdog,
    client_config,
    is_transport_error,
    quiet_transport_noise,
)
from .store import GcReport, Store, now_iso
from .tag import NAME_RE, VERSION_RE, Tag, parse_tag, validate_name

if TYPE_CHECKING:
    from s3fs import S3FileSystem

LABELS = "labels.json"
SHA_META = "sha256"  # user metadata key on data objects: x-amz-meta-sha256
# Measured on moto (benchmarks/remote_bench.py): fewer, larger requests win; 16 MiB ranges
# pulled at half the rate of 50 MiB ones. 50 MiB is also s3fs's part size for uploads.
RANGE_CHUNK = 50 << 20  # bytes per ranged GET when pulling a large file
RANGE_WINDOW = 6  # ranged GETs in flight per file: at most window x chunk (300 MiB) buffered
UPLOAD_PARTS_AT_ONCE = 8  # s3fs max_concurrency: multipart parts in flight per file
FILES_AT_ONCE = 4  # files transferred in parallel
LABEL_RETRIES = 20
INSTALL_HINT = "remote stores need s3fs: pip install 'torchshelf[s3]'"


@dataclass(frozen=True)
class Transfer:
    """What one push or pull did: `pushed`/`pulled`, or `unchanged` when nothing moved."""

    tag: Tag
    status: str
    bytes: int
    seconds: float


def parse_url(url: str) -> tuple[str, str]:
    """`s3://bucket/prefix` -> (bucket, prefix without slashes); anything else is a UsageError."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise UsageError(f"remote {url!r} is not an s3://bucket[/prefix] URL")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise UsageError(f"remote {url!r} has no bucket: write it as s3://bucket[/prefix]")
    return bucket, prefix.strip("/")


def _same_files(a: Manifest, b: Manifest) -> bool:
    def key(m: Manifest) -> dict[str, tuple[str, int]]:
        return {rel: (rec.sha256, rec.size) for rel, rec in m.files.items()}

    return key(a) == key(b)


def _client_error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an s3fs-translated OSError, if any."""
    for e in (exc, exc.__cause__, exc.__context__):
        response = getattr(e, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
    return None


def _is_precondition_failure(exc: BaseException) -> bool:
    return isinstance(exc, FileExistsError) or _client_error_code(exc) in (
        "PreconditionFailed",
        "ConditionalRequestConflict",
        "412",
        "409",
    )


class Remote:
    """A remote store at `s3://bucket/prefix`. Cheap to construct; connects on first use.

    Example:
        >>> remote = Remote("s3://models/team", endpoint_url="http://127.0.0.1:9000")
        >>> remote.push(Store("~/.torchshelf"), "classifier:latest")
        >>> [str(m.tag) for m in remote.list(labels=["stage=production"])]
    """

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        storage_options: dict[str, Any] | None = None,
        stall_timeout: float | None = None,
    ) -> None:
        self.bucket, self.prefix = parse_url(url)
        self.url = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.storage_options = dict(storage_options or {})
        # a push or pull that moves no byte for this long fails (see remote_limits)
        self.stall_timeout = float(stall_timeout or STALL_TIMEOUT_S)
        self._fs: S3FileSystem | None = None

    def __repr__(self) -> str:
        return f"Remote({self.url!r})"

    @classmethod
    def from_config(cls, url: str | None = None) -> Remote:
        """The remote named by `url`, else `TORCHSHELF_REMOTE`, else `[remote]` in shelf.toml."""
        settings = config.remote_settings(url or None)
        if not settings.get("url"):
            raise RemoteError(
                "no remote configured: pass --remote s3://bucket/prefix, set TORCHSHELF_REMOTE, "
                'or add [remote] url = "s3://..." to shelf.toml'
            )
        return cls(
            settings["url"],
            endpoint_url=settings.get("endpoint_url"),
            region=settings.get("region"),
            profile=settings.get("profile"),
            stall_timeout=settings.get("stall_timeout"),
        )

    # --- connection -------------------------------------------------------------------------

    @property
    def fs(self) -> S3FileSystem:
        """The s3fs filesystem, created on first use (s3fs is imported only here)."""
        if self._fs is None:
            try:
                import s3fs
            except ImportError:
                raise RemoteError(INSTALL_HINT) from None
            client_kwargs: dict[str, Any] = {}
            if self.endpoint_url:
                client_kwargs["endpoint_url"] = self.endpoint_url
            if self.region:
                client_kwargs["region_name"] = self.region
            options: dict[str, Any] = {
                # Every reader must see the remote as it is now: a label change or a new
                # version from another machine, so no listing cache and no shared instance.
                "skip_instance_cache": True,
                "use_listings_cache": False,
                "client_kwargs": client_kwargs,
                "max_concurrency": UPLOAD_PARTS_AT_ONCE,
                **self.storage_options,
            }
            # Explicit limits, so a dead or hung endpoint fails in bounded time (remote_limits).
            options["config_kwargs"] = {
                **client_config(),
                **self.storage_options.get("config_kwargs", {}),
            }
            if self.profile:
                options["profile"] = self.profile
            fs = s3fs.S3FileSystem(**options)
            fs.retries = int(self.storage_options.get("retries", S3FS_RETRIES))
            quiet_transport_noise(fs.loop)
            self._fs = fs
        return self._fs

    def _run(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on s3fs's event loop, turning transport failures into RemoteError."""
        try:
            loop = self.fs.loop
        except BaseException:
            coro.close()  # type: ignore[attr-defined]  # never started: no "never awaited" warning
            raise
        from fsspec.asyn import sync

        with self._errors():
            return sync(loop, lambda: coro)

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (RemoteError, NotFound, AlreadyExists, IntegrityError, UsageError, InvalidName):
            raise
        except PermissionError as exc:
            raise RemoteError(
                f"{self.url}: access denied ({exc}); check your AWS credentials"
            ) from None
        except Exception as exc:
            if is_disk_full(exc):
                raise  # the local disk, not the remote: the caller names the store
            name = type(exc).__name__
            if name in ("NoCredentialsError", "PartialCredentialsError"):
                raise RemoteError(
                    f"{self.url}: no AWS credentials found; set AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
                ) from None
            where = self.endpoint_url or "the default S3 endpoint"
            if isinstance(exc, Stalled):
                raise RemoteError(
                    f"{self.url}: the transfer stalled ({exc}) at {where}; check the network and "
                    "run the same command again (files already transferred are reused)"
                ) from None
            if is_transport_error(exc):
                raise RemoteError(
                    f"{self.url}: cannot reach {where} ({exc}); check endpoint_url / "
                    "AWS_ENDPOINT_URL, then run the same command again"
                ) from None
            if _client_error_code(exc) == "NoSuchBucket":
                raise RemoteError(f"{self.url}: bucket {self.bucket!r} does not exist") from None
            if isinstance(exc, OSError | ValueError) and not isinstance(exc, FileNotFoundError):
                raise RemoteError(f"{self.url}: {exc}") from None
            raise

    # --- keys -------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        """`bucket/prefix/part/...`: the path form s3fs takes."""
        return "/".join([self.bucket, *([self.prefix] if self.prefix else []), *parts])

    def _vkey(self, name: str, version: str, rel: str = "") -> str:
        return self._key("models", name, version, *([rel] if rel else []))

    def version_url(self, name: str, version: str) -> str:
        return f"s3://{self._vkey(name, version)}"

    # --- reading ----------------------------------------------------------------------------

    async def _cat_or_none(self, path: str, limit: int | None = None) -> bytes | None:
        """An object's bytes (at most `limit` of them), or None when it does not exist: one GET."""
        bucket, key = path.split("/", 1)
        ranged = {"Range": f"bytes=0-{limit - 1}"} if limit else {}
        try:
            resp = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **ranged)
        except FileNotFoundError:
            return None
        try:
            return await resp["Body"].read()
        finally:
            resp["Body"].close()

    def _effective(self, name: str, version: str, data: bytes, labels: bytes | None) -> Manifest:
        where = f"{self.version_url(name, version)}/{MANIFEST}"
        manifest = parse_manifest(data, where)
        if (manifest.name, manifest.version) != (name, version):
            raise ManifestError(f"{where} names {manifest.name}:{manifest.version}", MANIFEST)
        if labels is not None:
            manifest = dataclasses.replace(
                manifest, labels=self._parse_labels(labels, name, version)
            )
        return manifest

    def _parse_labels(self, data: bytes, name: str, version: str) -> dict[str, str]:
        where = f"{self.version_url(name, version)}/{LABELS}"
        try:
            raw = json.loads(data)["labels"]
        except (ValueError, KeyError, TypeError):
            raise ManifestError(f"{where} is not a labels object", LABELS) from None
        if not isinstance(raw, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
        ):
            raise ManifestError(f"{where}: labels must map strings to strings", LABELS)
        return raw

    def read_manifest(self, name: str, version: str) -> Manifest:
        """One version's manifest with its remote labels; NotFound without a manifest."""
        name = validate_name(name)

        async def both() -> tuple[bytes | None, bytes | None]:
            return await asyncio.gather(
                self._cat_or_none(self._vkey(name, version, MANIFEST)),
                self._cat_or_none(self._vkey(name, version, LABELS)),
            )

        data, labels = self._run(both())
        if data is None:
            raise NotFound(
                f"model {name}:{version} not found on {self.url}; see `shelf list --remote`"
            )
        return self._effective(name, version, data, labels)

    def _scan(self, name: str | None) -> builtins.list[Manifest]:
        """Every readable version (of `name`, or all): one listing, then manifests in parallel."""
        base = self._key("models", *([validate_name(name)] if name else []))
        depth = len(self._key("models").split("/"))

        async def scan() -> builtins.list[tuple[str, str, bytes | None, bytes | None]]:
            try:
                keys = await self.fs._find(base)
            except FileNotFoundError:
                keys = []
            if not keys and not await self.fs._exists(self.bucket):
                raise RemoteError(f"{self.url}: bucket {self.bucket!r} does not exist")
            found: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
            for key in keys:
                parts = key.split("/")[depth:]
                if len(parts) == 3 and parts[2] in (MANIFEST, LABELS):
                    n, v, f = parts
                    if NAME_RE.match(n) and VERSION_RE.match(v):
                        found[(n, v)].add(f)
            versions = [nv for nv, files in found.items() if MANIFEST in files]
            sem = asyncio.Semaphore(32)

            async def read(n: str, v: str) -> tuple[str, str, bytes | None, bytes | None]:
                async with sem:
                    labels = None
                    if LABELS in found[(n, v)]:
                        labels = await self._cat_or_none(self._vkey(n, v, LABELS))
                    return n, v, await self._cat_or_none(self._vkey(n, v, MANIFEST)), labels

            return await asyncio.gather(*(read(n, v) for n, v in versions))

        out = []
        for n, v, data, labels in self._run(scan()):
            if data is None:
                continue  # deleted while we looked
            with contextlib.suppress(ManifestError):  # as the local list: skip broken versions
                out.append(self._effective(n, v, data, labels))
        out.sort(key=lambda m: (m.creation_time, m.version), reverse=True)
        return out

    def _select(self, name: str | None, labels: Labels, latest: bool) -> builtins.list[Manifest]:
        sels = selectors.parse_selectors(labels)
        seen: set[str] = set()
        out = []
        for m in self._scan(name):
            if not selectors.matches(m.labels, sels) or (latest and m.name in seen):
                continue
            seen.add(m.name)
            out.append(m)
        return out

    def list(
        self, name: str | None = None, labels: Labels = None, *, latest: bool = False
    ) -> builtins.list[ModelSummary]:
        """Versions on the remote, newest first, filtered by label selectors (ANDed)."""
        from .store import summary_of

        return [summary_of(m) for m in self._select(name, labels, latest)]

    def list_info(
        self, name: str | None = None, labels: Labels = None, *, latest: bool = False
    ) -> builtins.list[ModelInfo]:
        """`list`, each version's whole record (`path` is its URL)."""
        return [self._info(m) for m in self._select(name, labels, latest)]

    def _info(self, m: Manifest) -> ModelInfo:
        # trusted: what a pull makes of it, since the configured remote is trusted
        return ModelInfo.from_manifest(m, self.version_url(m.name, m.version), True)

    def resolve(self, tag: object) -> Manifest:
        """`name`, `name:latest`, `name:version` or a unique version prefix -> the manifest."""
        name, version = parse_tag(tag)
        if version is None:
            found = self._scan(name)
            if not found:
                raise NotFound(f"model {name!r} not found on {self.url}; see `shelf list --remote`")
            return found[0]
        try:
            return self.read_manifest(name, version)
        except NotFound:
            versions = [m.version for m in self._scan(name)]
            where = f" on {self.url}"
            return self.read_manifest(name, pick_prefix(name, version, versions, where))

    def get(self, tag: object) -> ModelInfo:
        """The record of one remote version; downloads only its manifest and labels."""
        return self._info(self.resolve(tag))

    def leftovers(self) -> builtins.list[str]:
        """Version prefixes holding objects but no manifest (interrupted or refused pushes)."""
        depth = len(self._key("models").split("/"))

        async def scan() -> builtins.list[str]:
            try:
                keys = await self.fs._find(self._key("models"))
            except FileNotFoundError:
                return []
            files: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
            for key in keys:
                parts = key.split("/")[depth:]
                if len(parts) >= 3:
                    files[(parts[0], parts[1])].add("/".join(parts[2:]))
            return sorted(
                f"s3://{self._vkey(n, v)}" for (n, v), f in files.items() if MANIFEST not in f
            )

        return self._run(scan())

    def gc(self, older_than: float = 24 * 3600.0) -> GcReport:
        """Delete leftovers of pushes that stopped more than `older_than` seconds ago.

        A leftover is a version prefix with objects but no manifest, whose newest object is
        older than that, plus incomplete multipart uploads started before it. The age guard is
        what keeps a push still under way safe; a push stalled for longer would commit a
        manifest whose files are gone, which every pull then refuses as incomplete.
        """
        from datetime import timedelta, timezone

        cutoff = datetime.now(timezone.utc) - timedelta(seconds=older_than)
        depth = len(self._key("models").split("/"))
        base = self._key("models")

        def stamp(value: Any) -> datetime:
            if isinstance(value, datetime):
                return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
            return datetime.fromisoformat(str(value).replace("Z", "+00:00"))

        async def collect() -> tuple[builtins.list[str], int]:
            try:
                objects = await self.fs._find(base, detail=True)
            except FileNotFoundError:
                objects = {}
            groups: dict[tuple[str, str], builtins.list[tuple[str, dict[str, Any]]]] = (
                collections.defaultdict(list)
            )
            for key, info in objects.items():
                parts = key.split("/")[depth:]
                if len(parts) >= 3:
                    groups[(parts[0], parts[1])].append((key, info))
            removed, freed, doomed = [], 0, []
            for (n, v), items in sorted(groups.items()):
                if any(k.split("/")[depth + 2 :] == [MANIFEST] for k, _ in items):
                    continue
                if max(stamp(info.get("LastModified")) for _, info in items) > cutoff:
                    continue  # maybe a push still under way
                doomed += [k for k, _ in items]
                freed += sum(int(info.get("size", 0)) for _, info in items)
                removed.append(f"s3://{self._vkey(n, v)}")
            if doomed:
                await self.fs._rm(doomed)
            prefix = base.split("/", 1)[1] + "/"
            uploads = await self.fs._call_s3(
                "list_multipart_uploads", Bucket=self.bucket, Prefix=prefix
            )
            for up in uploads.get("Uploads", []):
                if stamp(up["Initiated"]) <= cutoff:
                    await self.fs._call_s3(
                        "abort_multipart_upload",
                        Bucket=self.bucket,
                        Key=up["Key"],
                        UploadId=up["UploadId"],
                    )
                    removed.append(f"s3://{self.bucket}/{up['Key']} (incomplete upload)")
            return removed, freed

        removed, freed = self._run(collect())
        return GcReport(tuple(removed), freed)

    # --- labels -----------------------------------------------------------------------------

    def set_labels(
        self, tag: object, labels: dict[str, str], remove: Iterable[str] = ()
    ) -> Manifest:
        """Add/overwrite `labels` and drop `remove` keys, by compare-and-swap on `labels.json`."""
        check_labels(labels)
        remove = builtins.list(remove)
        target = self.resolve(tag)
        name, version = target.name, target.version
        key = self._vkey(name, version, LABELS)

        async def swap() -> Manifest | None:
            try:
                head = await self.fs._call_s3(
                    "get_object", Bucket=self.bucket, Key=key.split("/", 1)[1]
                )
            except FileNotFoundError:
                current, condition = None, {"mode": "create"}
            else:
                try:
                    current = await head["Body"].read()
                finally:
                    head["Body"].close()
                condition = {"IfMatch": head["ETag"]}
            data = await self.fs._cat_file(self._vkey(name, version, MANIFEST))
            manifest = self._effective(name, version, data, current)
            manifest = dataclasses.replace(manifest, labels=merge_labels(manifest, labels, remove))
            body = json.dumps(
                {"labels": dict(manifest.labels), "updated_at": now_iso()}, sort_keys=True
            )
            try:
                await self.fs._pipe_file(key, body.encode(), **condition)
            except OSError as exc:
                if _is_precondition_failure(exc):
                    return None  # someone else changed the labels first: re-read and retry
                raise
            return manifest

        for attempt in range(LABEL_RETRIES):
            manifest = self._run(swap())
            if manifest is not None:
                return manifest
            time.sleep(min(0.05 * 2**attempt, 1.0))
        raise RemoteError(f"{self.url}: labels of {name}:{version} keep changing; try again")

    # --- push -------------------------------------------------------------------------------

    def push(self, store: Store, tag: object, progress: Progress | None = None) -> Transfer:
        """Upload one local version: files first (create-only), then the manifest (create-only).

        Same files already on the remote is a no-op (`unchanged`); different files are refused.
        """
        started = time.perf_counter()
        local = store.resolve(tag)
        name, version = local.name, local.version
        store.check(local)  # never publish a locally corrupted file (stat-cached, cheap)
        vdir = store.version_dir(name, version)
        existing = self._try_manifest(name, version)
        if existing is not None:
            return self._compare_existing(local, existing, started)
        watch = Watchdog(self.stall_timeout, progress)

        async def put_one(rel: str, rec: FileRecord, sem: asyncio.Semaphore) -> None:
            key = self._vkey(name, version, check_relpath(rel))
            async with sem:
                if await self._object_matches(key, rel, rec, local):
                    watch(rec["size"])  # resumed: uploaded by an earlier, interrupted push
                    return
                try:
                    await self.fs._put_file(
                        str(vdir / rel),
                        key,
                        mode="create",
                        Metadata={SHA_META: rec["sha256"]},
                        callback=_callback(watch),
                    )
                except OSError as exc:
                    if not _is_precondition_failure(exc):
                        raise
                    if not await self._object_matches(key, rel, rec, local):
                        raise self._conflict(local) from None

        async def put_all() -> None:
            sem = asyncio.Semaphore(FILES_AT_ONCE)
            await _all_or_nothing([put_one(rel, rec, sem) for rel, rec in local.files.items()])

        async def create_manifest() -> bool:
            try:
                await self.fs._pipe_file(
                    self._vkey(name, version, MANIFEST), local.to_json(), mode="create"
                )
            except OSError as exc:
                if _is_precondition_failure(exc):
                    return False
                raise
            return True

        self._run(watch.run(put_all()))
        # The commit point: exactly one writer creates the manifest.
        if self._run(create_manifest()):
            return Transfer(Tag(name, version), "pushed", local.size, time.perf_counter() - started)
        existing = self._try_manifest(name, version)
        if existing is None:  # pragma: no cover - a manifest that vanished right after a 412
            raise RemoteError(
                f"{self.url}: could not create the manifest of {name}:{version}; try again"
            )
        return self._compare_existing(local, existing, started)

    def _try_manifest(self, name: str, version: str) -> Manifest | None:
        with contextlib.suppress(NotFound):
            return self.read_manifest(name, version)
        return None

    def _compare_existing(self, local: Manifest, remote: Manifest, started: float) -> Transfer:
        if not _same_files(local, remote):
            raise self._conflict(local)
        return Transfer(
            Tag(local.name, local.version), "unchanged", 0, time.perf_counter() - started
        )

    def _conflict(self, local: Manifest) -> AlreadyExists:
        return AlreadyExists(
            f"{local.name}:{local.version} already exists on {self.url} with different files "
            "(or another push of it is under way); versions are immutable, save under another "
            "--version"
        )

    async def _object_matches(self, key: str, rel: str, rec: FileRecord, local: Manifest) -> bool:
        """True when the object exists with this file's size and sha256; False when absent."""
        try:
            head = await self.fs._call_s3(
                "head_object", Bucket=self.bucket, Key=key.split("/", 1)[1]
            )
        except FileNotFoundError:
            return False
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        if (
            int(head.get("ContentLength", -1)) == rec["size"]
            and meta.get(SHA_META) == rec["sha256"]
        ):
            return True
        raise self._conflict(local)

    # --- pull -------------------------------------------------------------------------------

    def pull(self, store: Store, tag: object, progress: Progress | None = None) -> Transfer:
        """Download one version into `store`; it appears only once every sha256 matched."""
        started = time.perf_counter()
        manifest = self.resolve(tag)
        name, version = manifest.name, manifest.version
        with contextlib.suppress(NotFound):
            local = store.read_manifest(name, version)
            if not _same_files(local, manifest):
                raise AlreadyExists(
                    f"{name}:{version} exists locally with different files than on {self.url}; "
                    f"delete the local copy (`shelf delete {name}:{version}`) to pull it"
                )
            return Transfer(Tag(name, version), "unchanged", 0, time.perf_counter() - started)
        what = f"pulling {name}:{version}"
        ensure_free(store.root, manifest.size, what)
        with translate_full(store.root, what, manifest.size):
            staging = store.stage()
        committed = False
        watch = Watchdog(self.stall_timeout, progress)
        try:

            async def get_all() -> None:
                sem = asyncio.Semaphore(FILES_AT_ONCE)
                await _all_or_nothing(
                    [
                        self._get_one(
                            self._vkey(name, version, check_relpath(rel)),
                            staging / rel,
                            rel,
                            rec,
                            manifest,
                            sem,
                            watch,
                        )
                        for rel, rec in manifest.files.items()
                    ]
                )

            self._run(watch.run(get_all()))
            origin = {
                "source": "remote",
                "remote": self.url,
                "pulled_at": now_iso(),
                "trusted": True,
            }
            try:
                store.commit(staging, manifest, auto_version=False, origin=origin)
            except AlreadyExists:  # a concurrent pull of the same version won the rename
                staging_done = store.read_manifest(name, version)
                if not _same_files(staging_done, manifest):
                    raise
                return Transfer(Tag(name, version), "unchanged", 0, time.perf_counter() - started)
            committed = True
        except BaseException as exc:
            if not committed and is_disk_full(exc):
                store.discard(staging)  # first, so the message reports the real free space
                committed = True  # nothing left for the finally below to discard
                raise store_full(store.root, what, manifest.size) from None
            raise
        finally:
            if not committed:
                store.discard(staging)
        return Transfer(Tag(name, version), "pulled", manifest.size, time.perf_counter() - started)

    async def _get_one(
        self,
        key: str,
        path: Any,
        rel: str,
        rec: FileRecord,
        manifest: Manifest,
        sem: asyncio.Semaphore,
        progress: Progress | None,
    ) -> None:
        """Fetch one object with ranged GETs in order, hashing while writing; check the result."""
        tag = f"{manifest.name}:{manifest.version}"
        size = int(rec["size"])
        async with sem:
            data = b""
            if 0 < size <= RANGE_CHUNK:  # small: one GET; one byte more than expected is
                try:  # enough to tell a longer object, and never more
                    got = await self._cat_or_none(key, limit=size + 1)
                    actual = None if got is None else len(got)
                    data = got or b""
                except OSError as exc:
                    if _client_error_code(exc) != "InvalidRange":
                        raise
                    actual = 0  # S3 answers 416 for a range of an empty object
            else:  # large: ranged GETs up to the manifest's size, so the real size must match
                try:
                    actual = int((await self.fs._info(key)).get("size", -1))
                except FileNotFoundError:
                    actual = None
            if actual is None:
                raise IntegrityError(
                    f"{tag}: {rel} is missing on {self.url}; the remote copy is incomplete, re-push it",
                    rel,
                )
            if actual != size:
                raise IntegrityError(
                    f"{tag}: {rel} on {self.url} has {actual} bytes, its manifest says "
                    f"{size}; the remote copy is corrupt, re-push it from a machine that has it",
                    rel,
                )
            path.parent.mkdir(parents=True, exist_ok=True)
            writer = HashingWriter(path, progress)
            loop = asyncio.get_running_loop()
            starts = iter(range(0, size, RANGE_CHUNK))
            pending: collections.deque[asyncio.Future[bytes]] = collections.deque()
            try:

                def more() -> None:
                    start = next(starts, None)
                    if start is not None:
                        end = min(start + RANGE_CHUNK, size)
                        pending.append(
                            asyncio.ensure_future(self.fs._cat_file(key, start=start, end=end))
                        )

                if size <= RANGE_CHUNK:
                    await loop.run_in_executor(None, writer.write, data)  # b"" when size is 0
                else:
                    for _ in range(RANGE_WINDOW):
                        more()
                while pending:
                    data = await pending.popleft()
                    more()
                    # Disk writes and hashing leave the event loop free for the other GETs.
                    await loop.run_in_executor(None, writer.write, data)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                writer.abort()
                raise
            # no fsync here: the commit fsyncs every file once, before the rename
            record = await loop.run_in_executor(None, lambda: writer.close(fsync=False))
        if record["size"] != size or record["sha256"] != rec["sha256"]:
            raise IntegrityError(
                f"{tag}: {rel} on {self.url} does not match the sha256 in its manifest; the remote "
                "copy is corrupt, re-push it from a machine that has it",
                rel,
            )


async def _all_or_nothing(coros: builtins.list[Awaitable[Any]]) -> None:
    """Run concurrently; on the first failure cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


def _callback(progress: Progress | None) -> Any:
    """An fsspec callback forwarding byte counts to `progress`."""
    from fsspec.callbacks import Callback, NoOpCallback

    if progress is None:
        return NoOpCallback()

    forward = progress

    class _Forward(Callback):
        def relative_update(self, inc: int = 1) -> None:
            forward(inc)

    return _Forward()


def open_remote(remote: Remote | str | bool | None = None) -> Remote:
    """`Remote` from an instance, a URL, or `True`/`None` for the configured one."""
    if isinstance(remote, Remote):
        return remote
    return Remote.from_config(remote if isinstance(remote, str) else None)
