"""`shelf deploy kubernetes`: the manifests and Containerfile a team applies, built as data.

    >>> from torchshelf.deploy import plan_deployment
    >>> bundle = plan_deployment("classifier", selectors=("stage=production",),
    ...                          remote="s3://models/team", gpus_per_replica=1)
    >>> [name for name, _ in bundle.documents]
    ['deployment.yaml', 'service.yaml', 'hpa.yaml', 'pdb.yaml']

Modules: `spec` (the request, checked), `pod` (the pull-then-serve pod), `kubernetes`
(Deployment, Service, HPA, PDB), `kserve` (ServingRuntime + InferenceService), `containerfile`.
Nothing here renders YAML or writes files: `cli/deploy.py` does. No torch is imported.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .containerfile import ARCHIVE_NAME, containerfile
from .kserve import kserve_manifests
from .kubernetes import kubernetes_manifests
from .spec import DeploySpec, deploy_spec

__all__ = ["ARCHIVE_NAME", "DeployBundle", "DeploySpec", "plan_deployment"]


@dataclass(frozen=True)
class DeployBundle:
    """What `shelf deploy` writes: manifests (file name, object), the Containerfile, the tag to
    export as `model.shelf` with --bake (else None), and hints for the operator."""

    spec: DeploySpec
    documents: list[tuple[str, dict[str, Any]]]
    containerfile: str
    bake_tag: str | None
    hints: list[str]


def _baked(spec: DeploySpec) -> DeploySpec:
    """--bake pins the exact local version (newest matching the selectors), since the image
    is built once from it."""
    from ..models import list as list_models

    found = list_models(spec.model, list(spec.selectors) or None, latest=True)
    if spec.version is not None:
        from ..lifecycle import get

        found = [get(spec.tag)]
    if not found:
        from ..errors import NotFound

        wanted = f" matching {', '.join(spec.selectors)}" if spec.selectors else ""
        raise NotFound(f"no version of {spec.model}{wanted} in the local store to bake")
    return replace(spec, version=found[0].tag.version, selectors=())


def _hints(spec: DeploySpec) -> list[str]:
    hints = [
        f"build the image: podman build -t {spec.image} -f Containerfile .  (then push it)",
        f"create the api token Secret: kubectl create secret generic {spec.token_secret} "
        "--from-literal=token=$(openssl rand -hex 32)",
    ]
    if spec.remote and not spec.s3_secret:
        hints.append(
            "the pods read the remote with the cluster's AWS identity (IRSA / workload "
            "identity); or pass --s3-secret NAME holding AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
        )
    return hints


def plan_deployment(target: str, *, kserve: bool = False, **options: Any) -> DeployBundle:
    """Check the request (see `deploy_spec` for the options) and build every document."""
    spec = deploy_spec(target, **options)
    if spec.bake:
        spec = _baked(spec)
    documents = kserve_manifests(spec) if kserve else kubernetes_manifests(spec)
    return DeployBundle(
        spec=spec,
        documents=documents,
        containerfile=containerfile(spec),
        bake_tag=spec.tag if spec.bake else None,
        hints=_hints(spec),
    )
