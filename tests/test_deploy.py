"""`shelf deploy kubernetes`: every manifest validated against the Kubernetes schemas, and the
Deployment's pod run locally as the kubelet would (tests/kubelet.py) against a moto S3 remote.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import child_env, run_shelf
from kubelet import Kubelet, PodFailed, expand

from torchshelf.deploy import plan_deployment
from torchshelf.deploy.pod import PRE_STOP_SECONDS, grace_seconds
from torchshelf.errors import UsageError

kubernetes_validate = pytest.importorskip("kubernetes_validate")

K8S = kubernetes_validate.latest_version()
REMOTE = "s3://models/team"


def validate(doc: dict[str, Any]) -> None:
    """Strict: an unknown or misspelt field is an error, as `kubectl apply --validate=strict`."""
    kubernetes_validate.validate(doc, K8S, strict=True)


def kinds(bundle: Any) -> list[str]:
    return [doc["kind"] for _, doc in bundle.documents]


VARIANTS = {
    "default": dict(remote=REMOTE),
    "labels-gpus": dict(
        selectors=("stage=production", "team in (vision,nlp)"),
        remote=REMOTE,
        endpoint_url="http://minio.storage:9000",
        replicas=3,
        max_replicas=12,
        gpus_per_replica=2,
        namespace="serving",
        s3_secret="s3-creds",
        cpu="8",
        memory="32Gi",
    ),
    "pinned": dict(remote=REMOTE, image="registry.example/ts:1", timeout=120.0),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_default_manifest_validates_against_the_kubernetes_schemas(variant: str) -> None:
    target = "classifier:v3" if variant == "pinned" else "classifier"
    bundle = plan_deployment(target, **VARIANTS[variant])  # type: ignore[arg-type]
    assert kinds(bundle) == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    for _, doc in bundle.documents:
        validate(doc)


def test_the_deployment_pulls_verified_probes_drains_and_reads_the_token_from_a_secret() -> None:
    bundle = plan_deployment("classifier", **VARIANTS["labels-gpus"])  # type: ignore[arg-type]
    dep = bundle.documents[0][1]
    pod = dep["spec"]["template"]["spec"]
    (pull,) = pod["initContainers"]
    script = pull["command"][-1]
    assert "--label stage=production" in script and "--label 'team in (vision,nlp)'" in script
    assert 'exec shelf pull "$tag"' in script  # pull verifies every sha256 before committing
    (server,) = pod["containers"]
    assert server["command"][:3] == ["shelf", "serve", "classifier"]
    assert server["command"][server["command"].index("--device") + 1] == "all"
    assert server["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert server["livenessProbe"]["httpGet"]["path"] == "/healthz"
    timeout = float(server["command"][server["command"].index("--timeout") + 1])
    # the drain: in-flight requests get --timeout, uvicorn's shutdown is bounded at +5 s
    assert pod["terminationGracePeriodSeconds"] > PRE_STOP_SECONDS + timeout + 5
    limits = server["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 2
    assert server["command"][server["command"].index("--threads") + 1] == "7"  # 8 CPUs - 1
    token = next(e for e in server["env"] if e["name"] == "TORCHSHELF_API_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "classifier-api-token", "key": "token"}
    notes = dep["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(server["ports"][0]["containerPort"])
    assert notes["prometheus.io/path"] == "/metrics"
    assert pull["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    hpa = bundle.documents[2][1]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 12)


def test_kserve_writes_a_v2_serving_runtime_and_inference_service() -> None:
    bundle = plan_deployment("classifier", kserve=True, remote=REMOTE, gpus_per_replica=1)
    (_, runtime), (_, isvc) = bundle.documents
    assert (runtime["apiVersion"], runtime["kind"]) == (
        "serving.kserve.io/v1alpha1",
        "ServingRuntime",
    )
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert runtime["spec"]["protocolVersions"] == ["v2"]
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {
        f["name"] for f in runtime["spec"]["supportedModelFormats"]
    }
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    # kubernetes-validate has no KServe CRDs: the parts that are core/v1 types are validated as
    # such, by placing them in a Pod (the runtime container, its volumes, the predictor's pod
    # fields and the model's resources, which KServe merges into that container).
    (container,) = runtime["spec"]["containers"]
    merged = {**container, "resources": model["resources"]}
    predictor = {
        k: v
        for k, v in isvc["spec"]["predictor"].items()
        if k not in ("model", "minReplicas", "maxReplicas")
    }
    validate(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "kserve-check"},
            "spec": {**predictor, "containers": [merged], "volumes": runtime["spec"]["volumes"]},
        }
    )
    for meta in (runtime["metadata"], isvc["metadata"]):
        validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta})
    script = container["command"][-1]
    assert script.index("shelf pull classifier") < script.index("exec shelf serve classifier")
    assert "--port 8080" in script


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["classifier"], "pass --remote"),
        (["svc.py:Classifier", "--remote", REMOTE], "deploys stored models"),
        (["classifier", "--remote", "/local/dir"], "s3://bucket/prefix"),
        (["classifier", "--remote", REMOTE, "--label", "a=(b"], None),
        (["classifier:v1", "--remote", REMOTE, "--label", "a=b"], "only narrows a bare name"),
        (["classifier", "--remote", REMOTE, "--cpu", "lots"], "Kubernetes quantity"),
        (["classifier", "--remote", REMOTE, "--max-replicas", "1", "--replicas", "2"], "below"),
        (["classifier", "--bake"], "--output-dir"),
        (["Bad Name", "--remote", REMOTE], "invalid model name"),
    ],
)
def test_bad_requests_exit_2_naming_the_fix(
    store_home: Path, args: list[str], message: str | None
) -> None:
    env = child_env(store_home)
    env.pop("TORCHSHELF_REMOTE", None)
    result = run_shelf("deploy", "kubernetes", *args, store=store_home, env=env)
    if message is None:  # `a=(b` is a valid K=V selector (value "(b"): accepted
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_stdout_is_one_multi_document_stream_and_dir_gets_files_and_a_containerfile(
    store_home: Path, tmp_path: Path
) -> None:
    out = run_shelf("deploy", "kubernetes", "classifier", "--remote", REMOTE, store=store_home)
    assert out.returncode == 0, out.stderr
    docs = list(yaml.safe_load_all(out.stdout))
    assert [d["kind"] for d in docs] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    assert "kubectl create secret generic classifier-api-token" in out.stderr
    target = tmp_path / "k8s"
    made = run_shelf(
        "deploy",
        "kubernetes",
        "classifier",
        "--remote",
        REMOTE,
        "-o",
        str(target),
        store=store_home,
    )
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in target.iterdir())
    assert names == ["Containerfile", "deployment.yaml", "hpa.yaml", "pdb.yaml", "service.yaml"]
    assert yaml.safe_load((target / "deployment.yaml").read_text()) == docs[0]
    text = (target / "Containerfile").read_text()
    import torchshelf

    assert f'"torchshelf[s3,fast]=={torchshelf.__version__}"' in text
    assert "pip install torch==" in text
    assert "shelf import" not in text and "model.shelf" not in text  # no model without --bake


def test_bake_puts_the_exact_local_version_in_the_image(store_home: Path, tmp_path: Path) -> None:
    import torch

    import torchshelf

    old = torchshelf.save_model("small", torch.nn.Linear(4, 2), labels={"stage": "production"})
    torchshelf.save_model("small", torch.nn.Linear(4, 2))  # newer, not production
    target = tmp_path / "bake"
    made = run_shelf(
        "deploy",
        "kubernetes",
        "small",
        "--label",
        "stage=production",
        "--bake",
        "-o",
        str(target),
        store=store_home,
    )
    assert made.returncode == 0, made.stderr
    dep = yaml.safe_load((target / "deployment.yaml").read_text())
    validate(dep)
    pod = dep["spec"]["template"]["spec"]
    assert "initContainers" not in pod  # nothing to pull
    assert pod["containers"][0]["command"][2] == str(old)  # pinned to the version baked
    text = (target / "Containerfile").read_text()
    assert "shelf import /tmp/model.shelf --trust" in text
    # the archive beside it is that version, and imports into a fresh store intact
    other = tmp_path / "image-store"
    imported = run_shelf("import", str(target / "model.shelf"), "--trust", store=other)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == str(old)
    assert run_shelf("verify", str(old), store=other).returncode == 0


def test_kubelet_expansion_follows_kubernetes_rules() -> None:
    env = {"A": "x", "B": "y"}
    assert expand("$(A)-$(B)-$(C)-$$(A)", env) == "x-y-$(C)-$(A)"


# --- the pod, run as the kubelet would ------------------------------------------------------

moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")

AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="module")
def remote(endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """A bucket on moto holding two versions of `small`: v-prod (stage=production) and a
    newer v-new; and the environment of the machine that pushed them."""
    bucket = f"deploy-{secrets.token_hex(4)}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys()).create_bucket(
        Bucket=bucket
    )
    url = f"s3://{bucket}/team"
    env = child_env(
        tmp_path_factory.mktemp("laptop"),
        **AWS,
        AWS_ENDPOINT_URL=endpoint,
        TORCHSHELF_REMOTE=url,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    code = (
        "import torch, torchshelf\n"
        "torch.manual_seed(0)\n"
        "def small():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(),\n"
        "        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10))\n"
        "torchshelf.save_model('small', small(), version='v-prod', labels={'stage': 'production'})\n"
        "torchshelf.save_model('small', small(), version='v-new')\n"
    )
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    for tag in ("small:v-prod", "small:v-new"):
        pushed = subprocess.run(
            [sys.executable, "-m", "torchshelf", "push", tag],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
    return url, env


def _keys() -> dict[str, str]:
    return {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(env: dict[str, str], out: Path, *extra: str) -> dict[str, Any]:
    made = subprocess.run(
        [sys.executable, "-m", "torchshelf", "deploy", "kubernetes", "small", "-o", str(out),
         "--endpoint-url", env["AWS_ENDPOINT_URL"], "--s3-secret", "s3-creds", *extra],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    dep = yaml.safe_load((out / "deployment.yaml").read_text())
    validate(dep)
    return dep


def _post(port: int, token: str | None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/predict", json.dumps({"inputs": [[0.5] * 64]}), headers)
    response = conn.getresponse()
    return response.status, json.loads(response.read())


SECRETS = {"small-api-token": {"token": "t0ken"}, "s3-creds": AWS}


@pytest.mark.slow
def test_the_deployment_pod_pulls_verified_becomes_ready_serves_and_drains_on_sigterm(
    remote: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = remote
    port = _free_port()
    dep = _deployment(env, tmp_path / "k8s", "--remote", url, "--label", "stage=production",
                      "--port", str(port))  # fmt: skip
    kubelet = Kubelet(
        dep, tmp_path / "pod", SECRETS, host_overrides={"TORCHSHELF_HOST": "127.0.0.1"}
    )
    try:
        kubelet.run_init_containers()
        # the start pulled exactly the newest *production* version into the pod's store
        store = kubelet.volumes["store"] / "models" / "small"
        assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["v-prod"]
        kubelet.start()
        kubelet.wait_for("startupProbe")
        kubelet.wait_for("readinessProbe")
        kubelet.wait_for("livenessProbe")
        assert kubelet.port_of(kubelet.main["readinessProbe"]["httpGet"]["port"]) == port
        assert _post(port, None)[0] == 401  # the token from the Secret is enforced
        status, body = _post(port, "t0ken")
        assert status == 200 and len(body["outputs"][0]) == 10
        expected = subprocess.run(
            [sys.executable, "-c", "import json, torch, torchshelf; m = torchshelf.load_model("
             "'small:v-prod'); print(json.dumps(m(torch.full((1, 64), 0.5)).tolist()))"],
            env=env, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        assert body["outputs"][0] == pytest.approx(json.loads(expected.stdout)[0], abs=1e-5)

        def still_serving() -> None:  # preStop: endpoints are being removed, traffic still flows
            assert _post(port, "t0ken")[0] == 200

        code, seconds = kubelet.terminate(during_pre_stop=still_serving)
        assert code == 0, kubelet.log("server")
        assert seconds < grace_seconds_of(dep) - PRE_STOP_SECONDS
    finally:
        kubelet.kill()


def grace_seconds_of(dep: dict[str, Any]) -> float:
    return float(dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


def test_a_pod_whose_selector_matches_nothing_never_starts_serving(
    remote: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = remote
    dep = _deployment(env, tmp_path / "k8s", "--remote", url, "--label", "stage=nowhere")
    kubelet = Kubelet(dep, tmp_path / "pod", SECRETS)
    with pytest.raises(PodFailed, match="no version of small"):
        kubelet.run_init_containers()


def test_a_pod_without_the_token_secret_is_not_created(
    remote: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, env = remote
    dep = _deployment(env, tmp_path / "k8s", "--remote", url)
    kubelet = Kubelet(dep, tmp_path / "pod", {"s3-creds": AWS})
    kubelet.run_init_containers()  # the newest version pulls fine
    with pytest.raises(PodFailed, match="CreateContainerConfigError"):
        kubelet.start()


def test_grace_period_covers_the_drain() -> None:
    for timeout in (1.0, 30.0, 300.0):
        bundle = plan_deployment("m", remote=REMOTE, timeout=timeout)
        assert grace_seconds(bundle.spec) > PRE_STOP_SECONDS + timeout + 5


def test_spec_errors_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="DNS-1123"):
        plan_deployment("m", remote=REMOTE, name="Not_OK")


@pytest.mark.parametrize(
    "args", [["deploy", "--help"], ["deploy", "kubernetes", "m", "--remote", REMOTE, "--kserve"]]
)
def test_deploy_does_not_import_torch(store_home: Path, args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "torchshelf", *args],
        env=child_env(store_home),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    modules = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "typer" in modules  # the check sees imports at all
    assert "torch" not in modules and "s3fs" not in modules
