"""Dockerfile and Kubernetes manifests, checked offline (no Docker engine or cluster here)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vidtrain.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BUILT_IN = {"v1", "batch/v1", "apps/v1"}  # API groups whose schemas kubernetes-validate bundles


def documents():
    """(file, document) for every manifest under k8s/ except kustomizations."""
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind, name=None):
    found = [doc for _, doc in documents() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found


def test_built_in_kinds_pass_strict_schema_validation(tmp_path):
    built_in = [doc for _, doc in documents() if doc["apiVersion"] in BUILT_IN]
    assert {d["kind"] for d in built_in} == {"ConfigMap", "PersistentVolumeClaim", "Job", "Service"}
    files = []
    for k, doc in enumerate(built_in):
        files.append(tmp_path / f"{k}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", *map(str, files)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files)


def test_kustomizations_name_existing_resources():
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text())["resources"]:
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


@pytest.fixture(params=["vidtrain", "vidtrain-mw"])
def job(request):
    return find("Job", request.param)[0]


def test_job_failure_semantics(job):
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    from vidtrain.job import EXIT_CONFIG, EXIT_DIVERGED, EXIT_NO_DATA

    # A retry cannot mend these: bad settings, no usable data, a diverging model.
    fatal = [EXIT_CONFIG, EXIT_NO_DATA, EXIT_DIVERGED]
    assert fail and fail[0]["onExitCodes"] == {"containerName": "vidtrain", "operator": "In", "values": fatal}
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    # SIGTERM -> checkpoint -> exit 143 takes seconds (tests/test_job.py); leave ample room for big models.
    assert pod["terminationGracePeriodSeconds"] >= 60


def test_job_pod_security_resources_and_volumes(job):
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "vidtrain"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    data = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]
    assert data["readOnly"] is True and mounts["/data"]["readOnly"] is True
    output = volumes[mounts["/output"]["name"]]["persistentVolumeClaim"]
    assert not output.get("readOnly") and not mounts["/output"].get("readOnly")
    claims = {c["metadata"]["name"] for c in find("PersistentVolumeClaim")}
    assert {data["claimName"], output["claimName"]} <= claims
    config = container["envFrom"][0]["configMapRef"]["name"]
    settings = find("ConfigMap", config)[0]["data"]
    assert settings["VIDTRAIN_DATA_DIR"] == "/data" and settings["VIDTRAIN_OUTPUT_DIR"] == "/output"


GIB = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def quantity(text: str) -> float:
    """Bytes of a Kubernetes quantity ('20Gi', '512M')."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * GIB.get(unit, 1)


def test_the_frame_cache_fits_its_volume(job):
    """The kubelet evicts a pod whose emptyDir outgrows its sizeLimit: the frame cache's bound
    (the ConfigMap's, or the setting's default) must leave room in the /cache volume."""
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    settings = find("ConfigMap", container["envFrom"][0]["configMapRef"]["name"])[0]["data"]
    cache = volumes[mounts[settings["VIDTRAIN_CACHE_DIR"]]["name"]]["emptyDir"]
    bound = float(settings.get("VIDTRAIN_FRAME_CACHE_GB", Settings.model_fields["frame_cache_gb"].default)) * 1e9
    assert bound + 2 * 2**30 <= quantity(cache["sizeLimit"])  # 2 GiB for the probe cache and the demo set


def test_metrics_port_is_named_annotated_and_monitored(job):
    template = job["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    port = int(find("ConfigMap", "vidtrain-config")[0]["data"]["VIDTRAIN_METRICS_PORT"])
    assert ports["metrics"] == port == int(template["metadata"]["annotations"]["prometheus.io/port"])
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    monitor = find("PodMonitor")[0]
    labels = template["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_configmap_sets_only_known_settings():
    names = {PREFIX + f.upper() for f in Settings.model_fields}
    for config in find("ConfigMap"):
        assert set(config["data"]) <= names, set(config["data"]) - names


def test_multiworker_job_gives_pods_what_the_entrypoint_needs(monkeypatch, tmp_path):
    job = find("Job", "vidtrain-mw")[0]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    workers = int(env["VIDTRAIN_NUM_WORKERS"]["value"])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == workers
    service = find("Service", env["VIDTRAIN_WORKER_SERVICE"]["value"])[0]
    assert service["spec"]["clusterIP"] == "None" and pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    grpc = int(env["VIDTRAIN_WORKER_PORT"]["value"])
    assert grpc in [p["port"] for p in service["spec"]["ports"]]
    assert env["VIDTRAIN_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    # What the entrypoint makes of it in pod 1: the real settings, with Kubernetes' values filled in.
    from vidtrain.settings import load

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("VIDTRAIN_JOB_NAME", job["metadata"]["name"])
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    for name in ("VIDTRAIN_NUM_WORKERS", "VIDTRAIN_WORKER_SERVICE", "VIDTRAIN_WORKER_PORT"):
        monkeypatch.setenv(name, env[name]["value"])
    assert load([]).cluster() == {
        "cluster": {"worker": [f"vidtrain-mw-{i}.vidtrain-workers:{grpc}" for i in range(workers)]},
        "task": {"type": "worker", "index": 1}}


def test_tfjob_has_the_operators_required_fields():
    tfjob = find("TFJob")[0]
    assert tfjob["apiVersion"] == "kubeflow.org/v1" and tfjob["metadata"]["name"]
    worker = tfjob["spec"]["tfReplicaSpecs"]["Worker"]
    assert worker["replicas"] >= 1 and worker["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
    container = worker["template"]["spec"]["containers"][0]
    assert container["name"] == "tensorflow" and container["image"]  # the operator's required container name
    assert "tfjob-port" in [p["name"] for p in container["ports"]]


def test_podmonitor_has_its_required_fields():
    monitor = find("PodMonitor")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] and monitor["spec"]["podMetricsEndpoints"]


def dockerfile_user() -> int:
    users = re.findall(r"^USER (\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert users and len(set(users)) == 1
    return int(users[0])


def requirement_pins(text: str) -> dict:
    return dict(line.split("==") for line in text.splitlines() if "==" in line and not line.startswith("#"))


def test_image_installs_the_same_pinned_set_as_make():
    dockerfile = (ROOT / "Dockerfile").read_text()
    makefile = (ROOT / "Makefile").read_text()
    assert "-r requirements-dev.txt" in makefile
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
    cpu = dockerfile.split("AS cpu", 1)[1]
    assert "COPY requirements.txt" in cpu
    assert "pip install --no-cache-dir --disable-pip-version-check -r requirements.txt" in cpu
    # The GPU stage derives its list from the same file: drop decord2 (built from source), add CUDA to TF.
    sed = re.search(r"sed -e '/\^decord2==/d' -e 's/\^tensorflow==/tensorflow\[and-cuda\]==/' /tmp/requirements.txt",
                    dockerfile)
    assert sed, "the gpu stage must derive its requirements from requirements.txt"
    pins = requirement_pins((ROOT / "requirements.txt").read_text())
    gpu = {("tensorflow[and-cuda]" if k == "tensorflow" else k): v for k, v in pins.items() if k != "decord2"}
    assert gpu["tensorflow[and-cuda]"] == pins["tensorflow"]
    # No Python package is pinned in the Dockerfile itself, apart from the uv installer.
    assert re.findall(r"(?:pip3? install|uv pip install)[^\n]*==", dockerfile) == ['pip3 install --no-cache-dir "uv==']


def test_image_runs_the_job_under_tini_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", dockerfile, flags=re.M)[1:]
    runtime = [s for s in stages if " AS cpu" in s.splitlines()[0] or " AS gpu" in s.splitlines()[0]]
    assert len(runtime) == 2 and stages[-1].splitlines()[0].endswith("AS cpu")  # cpu: the default target
    for stage in runtime:
        assert 'ENTRYPOINT ["tini", "--", "python", "entrypoint.py"]' in stage and "USER 10001" in stage
        assert re.search(r"tini=\S+", stage)
    assert "--no-cache-dir" in dockerfile and (ROOT / ".dockerignore").exists()
