"""The Kubernetes base's pod, run on this machine with `podman kube play` from the documents kustomize
renders: nginx answers /health and a scored request, and every probe's command passes.

What the played copy changes, and why: only the Deployment and its generated ConfigMaps are played
(a Service, autoscaler and disruption budget need a cluster); one replica, with nginx's port
published on a free loopback port (the kubelet would probe the pod's IP instead); the images are
the ones `python -m tests.podman` built; names get a unique suffix, since pods, secrets and volumes
are global on the machine. podman 4.3 makes each emptyDir a named volume on disk owned by whichever
container mounts it first; the test creates them beforehand as Kubernetes makes a `medium: Memory`
emptyDir: a tmpfs, mode 0777. The Secret the operator creates is made a podman secret: podman 4.3 reads a
secretKeyRef from a podman secret holding the Secret's `data` map."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import podman as pm
from tests.container_files import by_kind, documents
from tests.helpers import TEST_KEY, Client, free_port, sample_transaction, wait_for

pytestmark = pytest.mark.container


class PlayedPod:
    def __init__(self, work: Path) -> None:
        suffix = uuid.uuid4().hex[:8]
        docs = documents()
        configmaps, deployment = [d for d in docs if d["kind"] == "ConfigMap"], by_kind(docs, "Deployment")
        self.name = f"{deployment['metadata']['name']}-{suffix}"
        self.secret = f"fraud-scoring-api-key-{suffix}"
        self.port = free_port()
        renamed = {c["metadata"]["name"]: f"{c['metadata']['name']}-{suffix}" for c in configmaps}
        for configmap in configmaps:
            configmap["metadata"]["name"] = renamed[configmap["metadata"]["name"]]
        deployment["metadata"]["name"] = self.name
        deployment["spec"]["replicas"] = 1
        pod = deployment["spec"]["template"]["spec"]
        self.volumes: list[str] = []
        self.empty_dirs = [f"{v['name']}-{suffix}" for v in pod["volumes"] if "emptyDir" in v]
        for volume in pod["volumes"]:
            if "configMap" in volume:
                volume["configMap"]["name"] = renamed[volume["configMap"]["name"]]
            self.volumes.append(volume.get("configMap", {}).get("name") or f"{volume['name']}-{suffix}")
            for container in pod["containers"]:
                for mount in container["volumeMounts"]:
                    if mount["name"] == volume["name"]:
                        mount["name"] = f"{volume['name']}-{suffix}"
            volume["name"] = f"{volume['name']}-{suffix}"
        # The compactor is the api image with another command.
        images = {
            "api": pm.API_IMAGE,
            "compactor": pm.API_IMAGE,
            "nginx": pm.base_images()["NGINX_IMAGE"],
            "nginx-log-exporter": pm.EXPORTERS_IMAGE,
            "nginx-exporter": pm.EXPORTERS_IMAGE,
        }
        self.ports: dict[str, int] = {}  # each named port's published loopback port (nginx's http: self.port)
        for container in pod["containers"]:
            container["image"] = images[container["name"]]
            for source in container.get("envFrom", []):
                source["configMapRef"]["name"] = renamed[source["configMapRef"]["name"]]
            for env in container.get("env", []):
                if "secretKeyRef" in env.get("valueFrom", {}):
                    env["valueFrom"]["secretKeyRef"]["name"] = self.secret
            for port in container.get("ports", []):
                self.ports[port["name"]] = self.port if port["name"] == "http" else free_port()
                port.update(hostPort=self.ports[port["name"]], hostIP="127.0.0.1")
        self.deployment = deployment
        self.file = work / "pod.yaml"
        self.file.write_text(yaml.safe_dump_all([*configmaps, deployment]))
        secret = work / "secret.json"
        secret.write_text(json.dumps({"API_KEY": base64.b64encode(TEST_KEY.encode()).decode()}))
        secret.chmod(0o600)
        self.secret_file = secret

    def containers(self) -> dict[str, dict]:
        return {c["name"]: c for c in self.deployment["spec"]["template"]["spec"]["containers"]}

    def container_name(self, container: str) -> str:
        names = pm.podman("ps", "--format", "{{.Names}}", "--filter", f"name=^{self.name}-pod-0-{container}$")
        (name,) = names.stdout.split()
        return name

    def up(self) -> None:
        pm.podman("secret", "create", self.secret, str(self.secret_file))
        for name in self.empty_dirs:
            pm.podman("volume", "create", "--opt", "type=tmpfs", "--opt", "device=tmpfs", "--opt", "o=mode=0777", name)
        pm.podman("kube", "play", str(self.file), timeout=300)

    def down(self) -> None:
        pm.podman("kube", "down", str(self.file), check=False, timeout=120)
        pods = pm.podman("pod", "ps", "-q", "--filter", f"name={self.name}", check=False).stdout.split()
        if pods:
            pm.podman("pod", "rm", "-f", *pods, check=False)
        pm.podman("secret", "rm", self.secret, check=False)
        for volume in self.volumes:
            pm.podman("volume", "rm", "-f", volume, check=False)

    def wait_healthy(self, timeout: float = 120) -> None:
        start = time.monotonic()
        while True:
            try:
                if Client("127.0.0.1", self.port).request("GET", "/health").status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() - start > timeout:
                logs = pm.podman("pod", "logs", f"{self.name}-pod-0", check=False)
                raise AssertionError(logs.stdout[-4000:] + logs.stderr[-4000:])
            time.sleep(0.3)


@pytest.fixture(scope="module")
def pod(tmp_path_factory) -> Iterator[PlayedPod]:
    pm.ensure_images()
    played = PlayedPod(tmp_path_factory.mktemp("kube"))
    try:
        played.up()
        played.wait_healthy()
        yield played
    finally:
        played.down()


def test_the_pods_nginx_answers_health_and_a_scored_request(pod):
    client = Client("127.0.0.1", pod.port)
    health = client.request("GET", "/health")
    assert health.status == 200 and health.json["status"] == "healthy"
    reply = client.score(sample_transaction())
    assert reply.status == 200, reply.raw
    assert 0.0 <= reply.json["fraud-score"] <= 1.0
    assert client.score(sample_transaction(), key="not-the-key").status == 403  # the key is the Secret's


def test_every_probe_command_passes(pod):
    probes = 0
    for name, container in pod.containers().items():
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if not probe:
                continue
            probes += 1
            if "exec" in probe:
                ran = pm.podman("exec", pod.container_name(name), *probe["exec"]["command"], check=False)
                assert ran.returncode == 0, (name, kind, ran.stdout, ran.stderr)
            else:  # httpGet on the named port: the kubelet's GET, through the port published for it
                port = pod.ports[probe["httpGet"]["port"]]
                reply = Client("127.0.0.1", port).request("GET", probe["httpGet"]["path"], key=None)
                assert 200 <= reply.status < 400, (name, kind, reply.status)
    assert probes == 7  # the api's three, nginx's, the compactor's and each exporter's liveness


def test_the_pods_containers_run_as_the_manifest_says(pod):
    for name, container in pod.containers().items():
        inspected = json.loads(pm.podman("inspect", pod.container_name(name)).stdout)[0]
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True, name
        assert inspected["EffectiveCaps"] in (None, []), name
        uid = pm.podman("exec", pod.container_name(name), "id", "-u").stdout.strip()
        assert uid == str(container["securityContext"]["runAsUser"]), name


def test_nginxs_exporters_in_the_pod_count_what_nginx_answered(pod):
    """The sidecars' /metrics on their named ports: mtail's count of a 413 nginx answered itself
    (from the access log's datagrams) and the stub_status exporter's connections."""
    client = Client("127.0.0.1", pod.port)
    assert client.score(sample_transaction() | {"padding": "x" * 20_000}).status == 413

    def metrics(port_name: str) -> dict[tuple[str, frozenset], float]:
        reply = Client("127.0.0.1", pod.ports[port_name]).request("GET", "/metrics", key=None)
        assert reply.status == 200
        return {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(reply.raw.decode())
            for s in family.samples
        }

    refused = (
        "fraud_nginx_responses_total",
        frozenset({"status": "413", "refused_by": "client_max_body_size"}.items()),
    )
    assert wait_for(lambda: metrics("mtail-metrics").get(refused)) == 1
    exporter = metrics("nginx-metrics")
    assert exporter[("nginx_up", frozenset())] == 1 and exporter[("nginx_connections_active", frozenset())] >= 1
