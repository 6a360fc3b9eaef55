"""`--kserve`: a KServe ServingRuntime plus an InferenceService speaking the Open Inference
Protocol (v2), instead of the plain Deployment set.

The runtime is made for this one model (its command names the model, as the Deployment's
does), so the InferenceService names it explicitly. KServe's storage initializer is not used
(no `storageUri`): the container pulls with `shelf pull`, which verifies every sha256. The
deployment mode is RawDeployment, so no Knative is needed; KServe then creates the Deployment,
Service and HPA itself from `minReplicas`/`maxReplicas`.
"""

from __future__ import annotations

from typing import Any

from .pod import grace_seconds, pod_security, serve_container, serve_script, volumes
from .spec import DeploySpec

__all__ = ["KSERVE_PORT", "inference_service", "kserve_manifests", "serving_runtime"]

KSERVE_PORT = 8080  # KServe's convention for a runtime's HTTP port
MODEL_FORMAT = "torchshelf"


def _runtime_name(spec: DeploySpec) -> str:
    return f"torchshelf-{spec.name}"[:63].rstrip("-")


def _meta(name: str, spec: DeploySpec, annotations: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "labels": {"app.kubernetes.io/name": "torchshelf", "app.kubernetes.io/instance": spec.name},
        "annotations": annotations,
    }
    if spec.namespace:
        meta["namespace"] = spec.namespace
    return meta


def runtime_container(spec: DeploySpec) -> dict[str, Any]:
    """The serving container KServe runs (a core/v1 Container; tests validate it as one)."""
    container = serve_container(spec, name="kserve-container", port=KSERVE_PORT)
    container["command"] = serve_script(spec, KSERVE_PORT)
    if not spec.bake:
        env = [e for e in container["env"] if e["name"] != "TORCHSHELF_HOME"]
        container["env"] = [
            {"name": "TORCHSHELF_HOME", "value": spec.store_path},
            {"name": "TORCHSHELF_REMOTE", "value": spec.remote},
            *(
                [{"name": "AWS_ENDPOINT_URL", "value": spec.endpoint_url}]
                if spec.endpoint_url
                else []
            ),
            *env,
        ]
        if spec.s3_secret:
            container["envFrom"] = [{"secretRef": {"name": spec.s3_secret}}]
        # the pull runs before the server binds: give it time before startup fails the pod
        container["startupProbe"]["failureThreshold"] = 300
    container["ports"] = [{"containerPort": KSERVE_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        container[probe]["httpGet"]["port"] = KSERVE_PORT
    container.pop("resources")  # set per model on the InferenceService
    return container


def serving_runtime(spec: DeploySpec) -> dict[str, Any]:
    """A ServingRuntime (serving.kserve.io/v1alpha1) for this model, protocol v2."""
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": _meta(_runtime_name(spec), spec, {"torchshelf/model": spec.tag}),
        "spec": {
            "annotations": {
                "prometheus.kserve.io/port": str(KSERVE_PORT),
                "prometheus.kserve.io/path": "/metrics",
            },
            "supportedModelFormats": [{"name": MODEL_FORMAT, "version": "1", "autoSelect": False}],
            "protocolVersions": ["v2"],
            "multiModel": False,
            "containers": [runtime_container(spec)],
            "volumes": volumes(spec),
        },
    }


def _model_resources(spec: DeploySpec) -> dict[str, Any]:
    requests: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    limits: dict[str, Any] = {"memory": spec.memory}
    if spec.gpus_per_replica:
        requests["nvidia.com/gpu"] = spec.gpus_per_replica
        limits["nvidia.com/gpu"] = spec.gpus_per_replica
    return {"requests": requests, "limits": limits}


def inference_service(spec: DeploySpec) -> dict[str, Any]:
    """An InferenceService (serving.kserve.io/v1beta1) whose predictor uses that runtime."""
    predictor: dict[str, Any] = {
        "minReplicas": spec.replicas,
        "maxReplicas": spec.max_replicas,
        "terminationGracePeriodSeconds": grace_seconds(spec),
        "securityContext": pod_security(),
        "model": {
            "modelFormat": {"name": MODEL_FORMAT},
            "protocolVersion": "v2",
            "runtime": _runtime_name(spec),
            "resources": _model_resources(spec),
        },
    }
    if spec.gpus_per_replica:
        predictor["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    annotations = {
        "serving.kserve.io/deploymentMode": "RawDeployment",
        "serving.kserve.io/enable-prometheus-scraping": "true",
        "torchshelf/model": spec.tag,
    }
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _meta(spec.name, spec, annotations),
        "spec": {"predictor": predictor},
    }


def kserve_manifests(spec: DeploySpec) -> list[tuple[str, dict[str, Any]]]:
    """(file name, object): the runtime first, since the InferenceService refers to it."""
    return [
        ("servingruntime.yaml", serving_runtime(spec)),
        ("inferenceservice.yaml", inference_service(spec)),
    ]
