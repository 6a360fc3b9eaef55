"""A local stand-in for the kubelet: runs a Deployment's pod from its manifest, as written.

It does what the kubelet does with the parts of a pod spec that decide whether the pod ever
serves, so a manifest that is valid YAML but would never become ready fails a test:

- the environment is only the image's (PATH, HOME) plus the container's `env` and `envFrom`,
  with `secretKeyRef` / `secretRef` resolved from the given secrets (a missing, non-optional
  key is an error, as CreateContainerConfigError is) and `$(VAR)` references expanded in env
  values, command and args (`$$` escapes), in Kubernetes' order;
- each volume is a fresh directory; a path in env/argv under a volumeMount's mountPath is
  mapped into that directory (the one liberty: there is no mount namespace here);
- init containers run in order to completion, each must exit 0;
- the container's startupProbe, readinessProbe and livenessProbe are httpGet'ed at their own
  path and port (a named port resolves through the container's `ports`), each within its
  timeoutSeconds and periodSeconds x failureThreshold;
- termination runs the preStop hook (its `sleep`), then SIGTERM, and waits at most what is
  left of terminationGracePeriodSeconds before SIGKILL.

`host_overrides` replaces env values (used for one thing: the pod's bind address 0.0.0.0,
meaning every interface of the pod's own network, becomes 127.0.0.1 on this shared machine).
"""

from __future__ import annotations

import http.client
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodFailed(AssertionError):
    """The pod would not have become ready (or did not stop cleanly)."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined names are replaced, others kept, `$$` -> `$`."""

    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(one, text)


class Kubelet:
    def __init__(
        self,
        deployment: dict[str, Any],
        root: Path,
        secrets: dict[str, dict[str, str]],
        host_overrides: dict[str, str] | None = None,
    ) -> None:
        self.pod = deployment["spec"]["template"]["spec"]
        self.root = root
        self.secrets = secrets
        self.overrides = host_overrides or {}
        self.volumes = {}
        for vol in self.pod.get("volumes", []):
            assert "emptyDir" in vol, f"only emptyDir volumes are simulated: {vol}"
            path = root / "volumes" / vol["name"]
            path.mkdir(parents=True)
            self.volumes[vol["name"]] = path
        self.process: subprocess.Popen[bytes] | None = None
        self.logs: dict[str, Path] = {}

    # -- the container's view --------------------------------------------------------------
    def _mapped(self, container: dict[str, Any], text: str) -> str:
        for mount in container.get("volumeMounts", []):
            where = mount["mountPath"].rstrip("/")
            if text == where or text.startswith(where + "/"):
                return str(self.volumes[mount["name"]]) + text[len(where) :]
        return text

    def _secret(self, ref: dict[str, Any]) -> str | None:
        data = self.secrets.get(ref["name"])
        if data is None or ("key" in ref and ref["key"] not in data):
            if ref.get("optional"):
                return None
            raise PodFailed(f"CreateContainerConfigError: secret {ref} not found")
        return data[ref["key"]]

    def env(self, container: dict[str, Any]) -> dict[str, str]:
        image = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"}
        image["HOME"] = str(self.root / "home")
        env = dict(image)
        for source in container.get("envFrom", []):
            ref = source["secretRef"]
            data = self.secrets.get(ref["name"])
            if data is None and not ref.get("optional"):
                raise PodFailed(f"CreateContainerConfigError: secret {ref['name']} not found")
            env.update(data or {})
        for item in container.get("env", []):
            if "value" in item:
                value: str | None = expand(str(item["value"]), env)
            else:
                value = self._secret(item["valueFrom"]["secretKeyRef"])
            if value is not None:
                env[item["name"]] = self._mapped(container, value)
        env.update(self.overrides)
        return env

    def argv(self, container: dict[str, Any], env: dict[str, str]) -> list[str]:
        words = [*container.get("command", []), *container.get("args", [])]
        assert words, "the image has no ENTRYPOINT the manifest could rely on"
        return [self._mapped(container, expand(str(w), env)) for w in words]

    def _spawn(self, container: dict[str, Any]) -> subprocess.Popen[bytes]:
        env = self.env(container)
        Path(env["HOME"]).mkdir(exist_ok=True)
        log = self.root / f"{container['name']}.log"
        self.logs[container["name"]] = log
        with open(log, "wb") as out:
            return subprocess.Popen(
                self.argv(container, env), env=env, stdout=out, stderr=subprocess.STDOUT
            )

    def log(self, name: str) -> str:
        return self.logs[name].read_text(errors="replace") if name in self.logs else ""

    # -- lifecycle ---------------------------------------------------------------------------
    def run_init_containers(self, timeout: float = 120) -> None:
        for container in self.pod.get("initContainers", []):
            proc = self._spawn(container)
            try:
                code = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise PodFailed(f"init container {container['name']} did not finish") from None
            if code != 0:
                raise PodFailed(
                    f"Init:Error: {container['name']} exited {code}:\n{self.log(container['name'])}"
                )

    @property
    def main(self) -> dict[str, Any]:
        return self.pod["containers"][0]

    def start(self) -> None:
        self.process = self._spawn(self.main)

    def port_of(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        for item in self.main.get("ports", []):
            if item.get("name") == port:
                return int(item["containerPort"])
        raise PodFailed(f"probe names port {port!r}, which the container does not declare")

    def get(self, probe: dict[str, Any], headers: dict[str, str] | None = None) -> int:
        """One httpGet probe (or request): the status, or 0 when nothing answered."""
        action = probe["httpGet"]
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.port_of(action["port"]), timeout=probe.get("timeoutSeconds", 1)
        )
        try:
            conn.request("GET", action.get("path", "/"), headers=headers or {})
            return conn.getresponse().status
        except OSError:
            return 0
        finally:
            conn.close()

    def wait_for(self, name: str) -> float:
        """Probe until success (200-399) within periodSeconds x failureThreshold; the seconds."""
        probe = self.main[name]
        budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
        start = time.monotonic()
        while time.monotonic() - start < budget:
            assert self.process is not None
            if self.process.poll() is not None:
                raise PodFailed(
                    f"container exited {self.process.returncode}:\n{self.log('server')}"
                )
            if 200 <= self.get(probe) < 400:
                return time.monotonic() - start
            time.sleep(0.1)  # faster than the kubelet's period: the test does not wait for it
        raise PodFailed(f"{name} {probe['httpGet']} never succeeded:\n{self.log('server')}")

    def terminate(self, during_pre_stop: Any = None) -> tuple[int, float]:
        """preStop, SIGTERM, wait the rest of the grace period: (exit code, seconds after
        SIGTERM). SIGKILL past the grace period, as the kubelet does. `during_pre_stop()` runs
        at the start of the preStop pause (the server must still answer then)."""
        assert self.process is not None
        grace = float(self.pod.get("terminationGracePeriodSeconds", 30))
        began = time.monotonic()
        pre = self.main.get("lifecycle", {}).get("preStop", {})
        if during_pre_stop is not None:
            during_pre_stop()
        if "sleep" in pre:
            time.sleep(max(0.0, float(pre["sleep"]["seconds"]) - (time.monotonic() - began)))
        self.process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        try:
            code = self.process.wait(max(0.0, grace - (sent - began)))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise PodFailed(f"still running after the {grace:g} s grace period") from None
        return code, time.monotonic() - sent

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


__all__ = ["Kubelet", "PodFailed", "expand"]
