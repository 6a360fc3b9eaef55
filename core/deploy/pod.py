"""The pod of a deployed model: the start that pulls the version, the serving container, volumes.

A pod starts in two steps, as the kubelet runs them:

1. the `pull` init container resolves the version on the remote (a pinned `name:version`, the
   newest `name`, or the newest `name` matching the `--label` selectors) and runs `shelf pull`,
   which hashes every byte and commits only when every sha256 matches: a corrupt or missing
   model never reaches the server, and the pod never becomes ready;
2. the `server` container runs `shelf serve` on the store the init container filled (an
   emptyDir holding exactly that version, so a bare name serves it).

With `--bake` the version is in the image and step 1 is left out. KServe's ServingRuntime has
no init containers, so there both steps run in one shell (`serve_script`).

Everything here is plain data (dicts in the Kubernetes API's shape); `cli/deploy.py` renders it.
"""

from __future__ import annotations

import math
import shlex
from typing import Any

from .spec import TMP_PATH, DeploySpec

__all__ = [
    "PRE_STOP_SECONDS",
    "grace_seconds",
    "pod_security",
    "pull_container",
    "serve_args",
    "serve_container",
    "serve_script",
    "volumes",
]

PRE_STOP_SECONDS = 5  # endpoints controllers and proxies drop the pod before it stops accepting
RUN_AS = 10001  # the Containerfile's user
TOKEN_ENV = "TORCHSHELF_API_TOKEN"
HOST_ENV = "TORCHSHELF_HOST"


def grace_seconds(spec: DeploySpec) -> int:
    """terminationGracePeriodSeconds: the preStop pause, then the whole drain, plus a margin,
    so the kubelet's SIGKILL never cuts a drain short."""
    return math.ceil(PRE_STOP_SECONDS + spec.drain_seconds + 10)


def torch_threads(cpu: str) -> int:
    """Torch threads for a pod's CPU request: the container sees every core of the node, so
    `shelf serve`'s default (all cores but one) would oversubscribe a small pod."""
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    whole = max(1, math.ceil(cores))
    return max(1, whole - 1) if whole > 2 else 1


def _remote_env(spec: DeploySpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "TORCHSHELF_HOME", "value": spec.store_path},
        {"name": "TORCHSHELF_REMOTE", "value": spec.remote},
    ]
    if spec.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL", "value": spec.endpoint_url})
    return env


def _env_from(spec: DeploySpec) -> list[dict[str, Any]]:
    # S3 credentials as AWS_* keys of a Secret; without one, botocore's own chain (IRSA,
    # workload identity, instance roles) applies.
    return [{"secretRef": {"name": spec.s3_secret}}] if spec.s3_secret else []


def _hardened() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _mounts(spec: DeploySpec) -> list[dict[str, Any]]:
    mounts = [{"name": "tmp", "mountPath": TMP_PATH}]
    if not spec.bake:
        mounts.insert(0, {"name": "store", "mountPath": spec.store_path})
    return mounts


def volumes(spec: DeploySpec) -> list[dict[str, Any]]:
    """emptyDirs: the store the start pulls into, and /tmp (the root filesystem is read-only)."""
    vols: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    if not spec.bake:
        vols.insert(0, {"name": "store", "emptyDir": {}})
    return vols


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pull_lines(spec: DeploySpec) -> list[str]:
    """Shell lines that pull the version; the last one is the `shelf pull` itself."""
    if not spec.selectors:
        return [shlex.join(["shelf", "pull", spec.tag])]
    labels = " ".join(f"--label {shlex.quote(s)}" for s in spec.selectors)
    wanted = shlex.quote(", ".join(spec.selectors))
    return [
        f"tag=$(shelf list {shlex.quote(spec.model)} --remote {labels} --latest --output tags)",
        'if [ -z "$tag" ]; then',
        f'  echo "no version of {spec.model} on $TORCHSHELF_REMOTE matches "{wanted} >&2',
        "  exit 1",
        "fi",
        'shelf pull "$tag"',
    ]


def pull_command(spec: DeploySpec) -> list[str]:
    """The start's command: `shelf pull` of the pinned or newest version, or (with selectors)
    of the newest version on the remote matching them."""
    if not spec.selectors:
        return ["shelf", "pull", spec.tag]
    lines = _pull_lines(spec)
    return ["sh", "-c", "\n".join(["set -eu", *lines[:-1], "exec " + lines[-1]]) + "\n"]


def pull_container(spec: DeploySpec) -> dict[str, Any]:
    """The init container that pulls (and verifies) the version before the server starts."""
    return {
        "name": "pull",
        "image": spec.image,
        "command": pull_command(spec),
        "env": _remote_env(spec),
        **({"envFrom": _env_from(spec)} if spec.s3_secret else {}),
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
        "securityContext": _hardened(),
        "volumeMounts": _mounts(spec),
    }


def serve_args(spec: DeploySpec, host: str, port: int) -> list[str]:
    """`shelf serve ...` as argv (`host` may be a `$(VAR)` the kubelet expands)."""
    args = [
        "shelf",
        "serve",
        spec.tag,
        "--host",
        host,
        "--port",
        str(port),
        "--timeout",
        f"{spec.timeout:g}",
        "--threads",
        str(torch_threads(spec.cpu)),
    ]
    if spec.gpus_per_replica == 1:
        args += ["--device", "cuda"]
    elif spec.gpus_per_replica > 1:
        args += ["--device", "all"]  # one replica per GPU the pod was given
    return args


def _resources(spec: DeploySpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, Any] = {"memory": spec.memory}  # no CPU limit: throttling costs latency
    if spec.gpus_per_replica:
        limits["nvidia.com/gpu"] = spec.gpus_per_replica
        requests["nvidia.com/gpu"] = spec.gpus_per_replica
    return {"requests": requests, "limits": limits}


def _probe(path: str, port: Any, period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": timeout,
    }


def _serve_env(spec: DeploySpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "TORCHSHELF_HOME", "value": spec.store_path},
        {"name": HOST_ENV, "value": "0.0.0.0"},  # every interface of the pod's own network
        {
            "name": TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": spec.token_secret, "key": "token"}},
        },
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    return env


def serve_container(spec: DeploySpec, *, name: str = "server", port: int | None = None) -> dict:
    """The serving container: probes on /readyz and /healthz, a preStop pause, the token from
    a Secret, GPUs as `nvidia.com/gpu`."""
    port = spec.port if port is None else port
    return {
        "name": name,
        "image": spec.image,
        "command": serve_args(spec, f"$({HOST_ENV})", port),
        "env": _serve_env(spec),
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        # /healthz answers once the process is up; the model loads behind it, so a slow load
        # is covered by readiness, not by restarts. startupProbe gives the import 2 minutes.
        "startupProbe": _probe("/healthz", "http", 2, 60, 2),
        "readinessProbe": _probe("/readyz", "http", 5, 2, 2),
        "livenessProbe": _probe("/healthz", "http", 10, 3, 5),
        "lifecycle": {"preStop": {"sleep": {"seconds": PRE_STOP_SECONDS}}},
        "resources": _resources(spec),
        "securityContext": _hardened(),
        "volumeMounts": _mounts(spec),
    }


def serve_script(spec: DeploySpec, port: int) -> list[str]:
    """Pull then serve in one container (KServe's ServingRuntime has no init containers)."""
    serve = shlex.join(serve_args(spec, "HOST", port)).replace(" HOST ", f' "${HOST_ENV}" ')
    lines = [] if spec.bake else _pull_lines(spec)
    return ["sh", "-c", "\n".join(["set -eu", *lines, "exec " + serve]) + "\n"]
