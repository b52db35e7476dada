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
    pods_of_jobset,
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
    (configmap,), (job,) = find(documents, "ConfigMap", "vidtrain-config"), find(documents, "Job")
    (pod,) = pods_of(job)
    try:
        container = play(tmp_path, configmap, pod)
        inspect = json.loads(podman("inspect", container).stdout)[0]
        assert inspect["Config"]["User"] == "10001:10001"
        assert inspect["HostConfig"]["ReadonlyRootfs"] is True
        mounts = {m["Destination"]: m for m in inspect["Mounts"]}
        assert {"/data", "/output", "/cache", "/tmp"} <= set(mounts)  # and podman's own /dev/shm
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
    (configmap,), (job,), (service,) = (find(documents, "ConfigMap", "vidtrain-config"), find(documents, "Job"),
                                        find(documents, "Service"))
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



def play_workers(tmp_path, configmap, pods, network) -> list[str]:
    """Play every worker pod on the network, each answering as <hostname>.<subdomain>; the containers."""
    containers = []
    for pod in pods:
        fqdn = f"{pod['spec']['hostname']}.{pod['spec']['subdomain']}"
        containers.append(play(tmp_path, configmap, pod, "--network", f"{network}:alias={fqdn}"))
    return containers


def test_multiworker_jobset(tmp_path, claims, network):
    """The JobSet's two pods, the chief's and a worker's, named and labelled as JobSet makes them and
    reachable through the service it makes, build TF_CONFIG from that, train together and end with
    equal weights; only the chief mounts the output volume (the pods share none: the worker gets the
    index from the chief); the worker waits for the chief's final outputs, and both exit 0."""
    documents = render(tmp_path, "jobset", {"VIDTRAIN_DECODE_DEVICE": "cpu", **SMALL})
    (configmap,), (jobset,) = find(documents, "ConfigMap", "vidtrain-config"), find(documents, "JobSet")
    pods = pods_of_jobset(jobset)
    assert [p["metadata"]["name"] for p in pods] == ["vidtrain-mw-chief-0-0", "vidtrain-mw-workers-0-0"]
    try:
        containers = play_workers(tmp_path, configmap, pods, network)
        mounts = [{m["Destination"] for m in json.loads(podman("inspect", c).stdout)[0]["Mounts"]} for c in containers]
        assert "/output" in mounts[0] and "/output" not in mounts[1]
        codes = [exit_code(c, timeout=600) for c in containers]
        assert codes == [0, 0], "\n".join(logs(c) for c in containers)
        peers = ('{"chief": ["vidtrain-mw-chief-0-0.vidtrain-mw:2222"], "worker": '
                 '["vidtrain-mw-workers-0-0.vidtrain-mw:2222"]}')
        assert all(peers in logs(c) for c in containers)  # TF_CONFIG as the entrypoint built it
        workers = [json.loads((claims / "workers" / f"worker-{i}.json").read_text()) for i in range(2)]
        assert workers[0]["trainable_sha256"] == workers[1]["trainable_sha256"]
        shards = [set(w["clips"]) for w in workers]
        assert not shards[0] & shards[1] and len(shards[0] | shards[1]) == 15
        assert json.loads((claims / "report.json").read_text())["epochs_completed"] == 2
        # the worker finished after the chief had written its outputs (the final barrier); the chief itself
        # may exit a moment after the worker, so its outputs are the mark, not its exit
        assert (claims / "saved_model").is_dir()
        assert finished_at(containers[1]) >= (claims / "report.json").stat().st_mtime
    finally:
        take_down(tmp_path)


def finished_at(container: str) -> float:
    """When a container's process ended, as a Unix time: podman's FinishedAt, RFC 3339 with up to nine
    digits of fraction (trailing zeros dropped) and a zone."""
    import re
    from datetime import datetime

    stamp = json.loads(podman("inspect", container).stdout)[0]["State"]["FinishedAt"]
    seconds, fraction, zone = re.fullmatch(r"([^.]+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", stamp).groups()
    return datetime.fromisoformat(seconds + zone).timestamp() + float(f"0.{fraction or 0}")


def wait_for_log(container: str, text: str, timeout: float) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in logs(container):
            return True
        time.sleep(0.5)
    return False


@pytest.mark.parametrize("loss", ["SIGKILL", "network cut"])
def test_a_lost_jobset_worker_ends_the_other_in_bounded_time(tmp_path, claims, network, loss):
    """Worker 1 is killed (no goodbye) or cut off the network (no connection reset reaches anyone)
    mid-training: the chief stops within the peer timeout with one line naming worker 1 and exit 1,
    which the JobSet restarts from; no hang. Cut off, worker 1 leaves the same way."""
    import time

    documents = render(tmp_path, "jobset", {"VIDTRAIN_DECODE_DEVICE": "cpu", **SMALL, "VIDTRAIN_EPOCHS": "200"},
                       env={"VIDTRAIN_PEER_TIMEOUT_S": "10"})
    (configmap,), (jobset,) = find(documents, "ConfigMap", "vidtrain-config"), find(documents, "JobSet")
    pods = pods_of_jobset(jobset)
    try:
        chief, worker = play_workers(tmp_path, configmap, pods, network)
        assert wait_for_log(chief, "epoch 1/200", timeout=300), logs(chief)
        if loss == "SIGKILL":
            podman("kill", "--signal", "KILL", worker)
        else:  # the pod's network is its infra container's
            infra = podman("pod", "inspect", pods[1]["metadata"]["name"], "--format", "{{.InfraContainerID}}")
            podman("network", "disconnect", network, infra.stdout.strip())
        cut = time.monotonic()
        assert exit_code(chief, timeout=120) == 1, logs(chief)
        took = time.monotonic() - cut
        print(f"{loss}: the chief exited 1 after {took:.1f} s (VIDTRAIN_PEER_TIMEOUT_S=10)")
        lost = [line for line in logs(chief).splitlines() if "lost a peer: worker 1 (vidtrain-mw-workers-0-0" in line]
        assert len(lost) == 1 and "Traceback" not in logs(chief), logs(chief)
        assert took < 10 + 4 + 30  # the timeout, two polls, the exit (and podman's own latency)
        if loss == "network cut":
            assert exit_code(worker, timeout=120) == 1, logs(worker)
            assert "lost a peer: worker 0 (vidtrain-mw-chief-0-0" in logs(worker)
    finally:
        take_down(tmp_path)
