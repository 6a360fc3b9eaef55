"""The default manifest set: Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget.

Each function returns one Kubernetes object as a dict (validated against the API's schemas in
tests/test_deploy.py with kubernetes-validate). The pod itself is built in `pod.py`.
"""

from __future__ import annotations

from typing import Any

from .pod import grace_seconds, pod_security, pull_container, serve_container, volumes
from .spec import DeploySpec

__all__ = [
    "deployment",
    "disruption_budget",
    "autoscaler",
    "kubernetes_manifests",
    "selector_labels",
    "service",
]


def selector_labels(spec: DeploySpec) -> dict[str, str]:
    """The labels that tie the Service, HPA and PDB to the Deployment's pods."""
    return {"app.kubernetes.io/name": "torchshelf", "app.kubernetes.io/instance": spec.name}


def _metadata(spec: DeploySpec) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": spec.name,
        "labels": {
            **selector_labels(spec),
            "app.kubernetes.io/component": "model-server",
            "app.kubernetes.io/version": spec.torchshelf_version,
            "app.kubernetes.io/managed-by": "shelf-deploy",
        },
        "annotations": _model_annotations(spec),
    }
    if spec.namespace:
        meta["namespace"] = spec.namespace
    return meta


def _model_annotations(spec: DeploySpec) -> dict[str, str]:
    notes = {"torchshelf/model": spec.tag}
    if spec.selectors:
        notes["torchshelf/selectors"] = ", ".join(spec.selectors)
    if spec.remote:
        notes["torchshelf/remote"] = spec.remote
    return notes


def _pod_template(spec: DeploySpec) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace_seconds(spec),
        "securityContext": pod_security(),
        "containers": [serve_container(spec)],
        "volumes": volumes(spec),
        # Replicas on different nodes when the cluster has room: one node's loss is one pod.
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": selector_labels(spec)},
            }
        ],
    }
    if not spec.bake:
        pod["initContainers"] = [pull_container(spec)]
    if spec.gpus_per_replica:
        pod["tolerations"] = [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return {
        "metadata": {
            "labels": selector_labels(spec),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(spec.port),
                "prometheus.io/path": "/metrics",
                **_model_annotations(spec),
            },
        },
        "spec": pod,
    }


def deployment(spec: DeploySpec) -> dict[str, Any]:
    """The pods: rolled one at a time with no capacity lost (maxUnavailable 0)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec),
        "spec": {
            "replicas": spec.replicas,
            "selector": {"matchLabels": selector_labels(spec)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": _pod_template(spec),
        },
    }


def service(spec: DeploySpec) -> dict[str, Any]:
    """A ClusterIP Service on port 80; only ready pods (readiness probe) get traffic."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(spec),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(spec),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(spec: DeploySpec) -> dict[str, Any]:
    """Scale between --replicas and --max-replicas on CPU (metrics-server is all it needs)."""
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(spec),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": spec.name},
            "minReplicas": spec.replicas,
            "maxReplicas": spec.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": 70},
                    },
                }
            ],
        },
    }


def disruption_budget(spec: DeploySpec) -> dict[str, Any]:
    """Voluntary disruptions (node drains, upgrades) take down one pod at a time."""
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(spec),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec)}},
    }


def kubernetes_manifests(spec: DeploySpec) -> list[tuple[str, dict[str, Any]]]:
    """(file name, object) for the default set, in the order `kubectl apply` should see them."""
    return [
        ("deployment.yaml", deployment(spec)),
        ("service.yaml", service(spec)),
        ("hpa.yaml", autoscaler(spec)),
        ("pdb.yaml", disruption_budget(spec)),
    ]
