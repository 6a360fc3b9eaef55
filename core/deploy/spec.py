"""What `shelf deploy` is asked to deploy: one stored model, checked and normalised up front.

Everything that can be wrong with the request (a service target, a bad selector, no remote, a
name Kubernetes refuses) fails here as a `UsageError`, before any manifest is built. No torch,
no s3fs: the remote is only named, never contacted (the pods pull at start).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from importlib import metadata

from .. import config
from ..errors import UsageError
from ..selectors import parse_selectors
from ..tag import parse_tag

__all__ = ["DeploySpec", "deploy_spec", "k8s_name"]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_MEMORY = re.compile(r"^[0-9]+(\.[0-9]+)?(k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_CPU = re.compile(r"^([0-9]+(\.[0-9]+)?|[0-9]+m)$")

STORE_PATH = "/var/lib/torchshelf"  # the pod's store: an emptyDir the start pulls into
BAKED_STORE_PATH = "/opt/torchshelf/store"  # the image's store with --bake
TMP_PATH = "/tmp"


@dataclass(frozen=True)
class DeploySpec:
    """One model's deployment: what to pull, how to serve it, and how many pods of what size."""

    model: str
    version: str | None  # None: the newest version (matching `selectors`) when a pod starts
    selectors: tuple[str, ...] = ()
    remote: str | None = None
    endpoint_url: str | None = None
    name: str = ""
    namespace: str | None = None
    image: str = ""
    replicas: int = 1
    max_replicas: int = 1
    gpus_per_replica: int = 0
    cpu: str = "1"
    memory: str = "2Gi"
    port: int = 3000
    timeout: float = 30.0
    token_secret: str = ""
    s3_secret: str | None = None
    bake: bool = False
    torchshelf_version: str = ""
    torch_version: str = ""
    python_version: str = "3.11"
    extra_labels: dict[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        """What `shelf pull`/`shelf serve` are given: `name:version`, or the bare name."""
        return f"{self.model}:{self.version}" if self.version else self.model

    @property
    def store_path(self) -> str:
        return BAKED_STORE_PATH if self.bake else STORE_PATH

    @property
    def drain_seconds(self) -> float:
        """The longest a SIGTERM'd server takes: in-flight requests get `--timeout`, and
        uvicorn's graceful shutdown is bounded at `--timeout` + 5 s (serving/server.py)."""
        return self.timeout + 5.0


def k8s_name(model: str) -> str:
    """A DNS-1123 label for a model name (names may hold '.' and '_'; Kubernetes refuses them)."""
    name = re.sub(r"[._]+", "-", model).strip("-")[:63].rstrip("-")
    if not _DNS_LABEL.match(name):
        raise UsageError(f"cannot make a Kubernetes name from {model!r}; pass --name")
    return name


def _version_of(dist: str, fallback: str) -> str:
    try:
        return metadata.version(dist).split("+")[0]  # 2.13.0+cpu -> 2.13.0 (the PyPI wheel)
    except metadata.PackageNotFoundError:
        return fallback


def _check_target(target: str) -> tuple[str, str | None]:
    path = target.partition(":")[0]
    if path.endswith(".py") or "/" in path:
        raise UsageError(
            f"{target!r} is a service file; `shelf deploy` deploys stored models (save one "
            "with `shelf save` and push it, or build your own image around the service)"
        )
    return parse_tag(target)


def _check_quantity(value: str, flag: str) -> str:
    if not (_CPU if flag == "--cpu" else _MEMORY).match(value):
        raise UsageError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi)")
    return value


def deploy_spec(
    target: str,
    *,
    selectors: tuple[str, ...] = (),
    remote: str | None = None,
    endpoint_url: str | None = None,
    name: str | None = None,
    namespace: str | None = None,
    image: str | None = None,
    replicas: int = 1,
    max_replicas: int | None = None,
    gpus_per_replica: int = 0,
    cpu: str = "1",
    memory: str = "2Gi",
    port: int = 3000,
    timeout: float = 30.0,
    token_secret: str | None = None,
    s3_secret: str | None = None,
    bake: bool = False,
) -> DeploySpec:
    """Check a deploy request and fill in its defaults (remote from the config, names, pins)."""
    model, version = _check_target(target)
    parse_selectors(selectors)  # a malformed selector fails now, not in every pod
    if version is not None and selectors:
        raise UsageError(f"{target!r} names one version; --label only narrows a bare name")
    if not bake:
        remote = config.remote_settings(remote or None).get("url")
        if not remote:
            raise UsageError(
                "the pods pull the model from a remote store: pass --remote s3://bucket/prefix "
                f"(or set {config.ENV_REMOTE}), or bake the model into the image with --bake"
            )
        if not str(remote).startswith("s3://"):
            raise UsageError(f"--remote {remote!r} must be an s3://bucket/prefix URL")
    if replicas < 1 or gpus_per_replica < 0 or not 1 <= port <= 65535:
        raise UsageError("--replicas must be >= 1, --gpus-per-replica >= 0, --port 1..65535")
    top = replicas if max_replicas is None else max_replicas
    if top < replicas:
        raise UsageError(f"--max-replicas {top} is below --replicas {replicas}")
    kname = name or k8s_name(model)
    for value, flag in ((kname, "--name"), (namespace, "--namespace")):
        if value is not None and not _DNS_LABEL.match(value):
            raise UsageError(f"{flag} {value!r} is not a DNS-1123 label (a-z, 0-9, '-', <= 63)")
    tv = _version_of("torchshelf", "0.1.0")

    return DeploySpec(
        model=model,
        version=version,
        selectors=tuple(selectors),
        remote=None if bake else str(remote),
        endpoint_url=endpoint_url or None,
        name=kname,
        namespace=namespace,
        image=image or f"torchshelf-{kname}:{tv}",
        replicas=replicas,
        max_replicas=top,
        gpus_per_replica=gpus_per_replica,
        cpu=_check_quantity(cpu, "--cpu"),
        memory=_check_quantity(memory, "--memory"),
        port=port,
        timeout=timeout,
        token_secret=token_secret or f"{kname}-api-token",
        s3_secret=s3_secret,
        bake=bake,
        torchshelf_version=tv,
        torch_version=_version_of("torch", "2.13.0"),
        python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
    )
