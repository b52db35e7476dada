"""The k8s/ Jobs played for real: `kubectl kustomize` renders them (with a small CPU overlay),
their pods run under `podman kube play` with the volumes, env and security context as written."""

import json
import tarfile
from pathlib import Path

import pytest
import yaml
from containers import (
    SMALL,
    closed_modes,
    exit_code,
    find,
    image,  # noqa: F401 (the fixture)
    logs,
    podman,
    pods_of,
    render,
)

from loader.demo import make_demo_dataset

pytestmark = [pytest.mark.image, pytest.mark.timeout(900), pytest.mark.usefixtures("image")]
NETWORK = "vidtrain-test"  # a podman network with name resolution (aardvark-dns)
CLAIMS = ("vidtrain-data", "vidtrain-output")  # podman kube play mounts the named volume of a claim


@pytest.fixture
def claims(tmp_path):
    """The two claims as named volumes: the dataset imported into vidtrain-data, vidtrain-output empty."""
    for claim in CLAIMS:
        podman("volume", "rm", "-f", claim, check=False)
        podman("volume", "create", claim)
    data = make_demo_dataset(tmp_path / "data", 3, 1, 0)
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(data, arcname=".")
    podman("volume", "import", "vidtrain-data", str(tmp_path / "data.tar"))
    yield Path(podman("volume", "inspect", "vidtrain-output", "--format", "{{.Mountpoint}}").stdout.strip())
    for claim in CLAIMS:
        podman("volume", "rm", "-f", claim, check=False)


def play(tmp_path: Path, configmap: dict, pod: dict, *args: str) -> str:
    """Play a ConfigMap and a Pod; the pod's container name."""
    spec = tmp_path / f"{pod['metadata']['name']}.yaml"
    spec.write_text(yaml.safe_dump_all([configmap, pod]))
    podman("kube", "down", str(spec), check=False)
    podman("kube", "play", *args, str(spec))
    return f"{pod['metadata']['name']}-{pod['spec']['containers'][0]['name']}"


def take_down(tmp_path: Path):
    for spec in tmp_path.glob("*.yaml"):
        podman("kube", "down", str(spec), check=False)


def test_single_worker_job(tmp_path, claims):
    documents = render(tmp_path, ".", {"VIDTRAIN_DECODE_DEVICE": "cpu", **SMALL})
    (configmap,), (job,) = find(documents, "ConfigMap"), find(documents, "Job")
    (pod,) = pods_of(job)
    try:
        container = play(tmp_path, configmap, pod)
        inspect = json.loads(podman("inspect", container).stdout)[0]
        assert inspect["Config"]["User"] == "10001:10001"
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        mounts = {m["Destination"]: m for m in inspect["Mounts"]}
        assert set(mounts) == {"/data", "/output", "/cache", "/tmp", "/dev/shm"}
        assert not mounts["/data"]["RW"] and mounts["/output"]["RW"]
        assert exit_code(container, timeout=600) == 0, logs(container)
        out = logs(container)
        assert "data: 15 train / 5 val clips" in out and "(/data)" in out, out
        report = json.loads((claims / "report.json").read_text())
        assert report["epochs_completed"] == 2 and report["dataset"]["train_clips"] == 15
        assert (claims / "model.keras").stat().st_size > 0
        assert closed_modes(claims) == []  # podman's volume store itself is private to root
    finally:
        take_down(tmp_path)


@pytest.fixture
def network():
    podman("network", "rm", "-f", NETWORK, check=False)
    podman("network", "create", NETWORK)
    yield NETWORK
    podman("network", "rm", "-f", NETWORK, check=False)


def test_multiworker_indexed_job(tmp_path, claims, network):
    """Two pods of the Indexed Job, each reachable as <job>-<index>.<service> on the network,
    build TF_CONFIG from what Kubernetes gives them, train together and end with equal weights."""
    documents = render(tmp_path, "multiworker", {"VIDTRAIN_DECODE_DEVICE": "cpu", **SMALL})
    (configmap,), (job,), (service,) = (find(documents, k) for k in ("ConfigMap", "Job", "Service"))
    pods = pods_of(job)
    assert len(pods) == 2
    try:
        containers = []
        for pod in pods:
            fqdn = f"{pod['spec']['hostname']}.{pod['spec']['subdomain']}"
            assert pod["spec"]["subdomain"] == service["metadata"]["name"]
            containers.append(play(tmp_path, configmap, pod, "--network", f"{network}:alias={fqdn}"))
        codes = [exit_code(c, timeout=600) for c in containers]
        assert codes == [0, 0], "\n".join(logs(c) for c in containers)
        peers = '["vidtrain-mw-0.vidtrain-workers:2222", "vidtrain-mw-1.vidtrain-workers:2222"]'
        assert all(peers in logs(c) for c in containers)  # TF_CONFIG as the entrypoint built it
        workers = [json.loads((claims / "workers" / f"worker-{i}.json").read_text()) for i in range(2)]
        assert workers[0]["trainable_sha256"] == workers[1]["trainable_sha256"]
        assert workers[0]["non_trainable_sha256"] == workers[1]["non_trainable_sha256"]
        shards = [set(w["clips"]) for w in workers]
        assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 15
        report = json.loads((claims / "report.json").read_text())
        assert report["epochs_completed"] == 2
    finally:
        take_down(tmp_path)

