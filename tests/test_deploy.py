"""Dockerfile and Kubernetes manifests, checked offline (no Docker engine or cluster here)."""

import os
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


FORMS = {"single": K8S, "jobset": K8S / "jobset", "indexed": K8S / "multiworker"}
COMPONENTS = ("gpu", "kueue")
NOT_MANIFESTS = {"kustomization.yaml", "rules-test.yaml"}


def documents():
    """(file, document) for every manifest under k8s/ (not kustomizations, not the rule tests)."""
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) if path.name not in NOT_MANIFESTS
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind, name=None):
    found = [doc for _, doc in documents() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found


def render(folder: Path, components: tuple[str, ...] = ()) -> list[dict]:
    """`kubectl kustomize` of a form, through an overlay adding `components` when given."""
    target = folder
    if components:
        overlay = ROOT / ".cache" / "overlay"
        overlay.mkdir(parents=True, exist_ok=True)
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": [os.path.relpath(folder, overlay)],
            "components": [os.path.relpath(K8S / "components" / c, overlay) for c in components]}))
        target = overlay
    result = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def rendered(form: str, kind: str, name: str | None = None, components=()) -> dict:
    docs = [d for d in render(FORMS[form], components) if d["kind"] == kind and (name is None or
                                                                                 d["metadata"]["name"] == name)]
    assert len(docs) == 1, f"{form}: {kind} {name}"
    return docs[0]


def job_of(form: str, components=()) -> dict:
    """The batch/v1 Job a form makes: the Job itself, or the Job of the JobSet's replicated job."""
    if form != "jobset":
        return rendered(form, "Job", components=components)
    jobset = rendered(form, "JobSet", components=components)
    job = jobset["spec"]["replicatedJobs"][0]["template"]
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "vidtrain-mw-workers-0"}, "spec": job["spec"]}


@pytest.mark.parametrize("components", [(), ("gpu",), ("kueue",), ("gpu", "kueue")], ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_every_form_renders_alone_and_with_every_component(form, components):
    kinds = [d["kind"] for d in render(FORMS[form], components)]
    expected = {"single": "Job", "jobset": "JobSet", "indexed": "Job"}[form]
    assert kinds.count(expected) == 1 and {"ConfigMap", "PersistentVolumeClaim", "PodMonitor",
                                          "PrometheusRule"} <= set(kinds)


def test_built_in_kinds_pass_strict_schema_validation(tmp_path):
    """Every built-in document of every rendered form, the JobSet's Job template included (as a Job)."""
    docs = []
    for form in FORMS:
        for components in ((), ("gpu", "kueue")):
            docs += [d for d in render(FORMS[form], components) if d["apiVersion"] in BUILT_IN]
            if form == "jobset":
                docs.append(job_of(form, components))
    docs.append(find("Job", "vidtrain-fill-data")[0])
    assert {d["kind"] for d in docs} == {"ConfigMap", "PersistentVolumeClaim", "Job", "Service"}
    files = []
    for k, doc in enumerate(docs):
        files.append(tmp_path / f"{k}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                             "--kubernetes-version", "1.33", *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files)


def test_kustomizations_name_existing_resources():
    for kustomization in K8S.rglob("kustomization.yaml"):
        for resource in yaml.safe_load(kustomization.read_text()).get("resources", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


def test_stock_cluster_defaults_cpu_image_cpu_decode_no_gpu_no_shm():
    for form in FORMS:
        pod = job_of(form)["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"] == "vidtrain:cpu-0.1.0"
        assert "nvidia.com/gpu" not in str(container["resources"])
        assert "/dev/shm" not in [m["mountPath"] for m in container["volumeMounts"]]
        assert rendered(form, "ConfigMap", "vidtrain-config")["data"]["VIDTRAIN_DECODE_DEVICE"] == "cpu"
        gpu = job_of(form, ("gpu",))["spec"]["template"]["spec"]["containers"][0]
        assert gpu["image"] == "vidtrain:gpu-0.1.0" and gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert rendered(form, "ConfigMap", "vidtrain-config", ("gpu",))["data"]["VIDTRAIN_DECODE_DEVICE"] == "gpu"


def test_one_worker_gets_read_write_once_volumes_and_many_workers_shared_ones():
    modes = {form: {c["metadata"]["name"]: c["spec"]["accessModes"] for c in render(FORMS[form])
                    if c["kind"] == "PersistentVolumeClaim"} for form in FORMS}
    assert modes["single"] == {"vidtrain-data": ["ReadWriteOnce"], "vidtrain-output": ["ReadWriteOnce"]}
    for form in ("jobset", "indexed"):
        assert modes[form] == {"vidtrain-data": ["ReadOnlyMany"], "vidtrain-output": ["ReadWriteMany"]}


@pytest.mark.parametrize("form", FORMS)
def test_ephemeral_storage_is_requested_for_the_scratch_volumes(form):
    pod = job_of(form)["spec"]["template"]["spec"]
    scratch = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v)
    resources = pod["containers"][0]["resources"]
    assert quantity(resources["requests"]["ephemeral-storage"]) >= scratch
    assert quantity(resources["limits"]["ephemeral-storage"]) >= scratch


@pytest.mark.parametrize("form", ["jobset", "indexed"])
def test_the_worker_count_is_set_in_one_place(form, tmp_path):
    """VIDTRAIN_NUM_WORKERS in the form's file drives completions and parallelism: change it there
    (in a copy of k8s/) and everything follows."""
    import shutil

    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    source = copy / ("jobset/jobset.yaml" if form == "jobset" else "multiworker/job.yaml")
    text = source.read_text()
    assert text.count('{name: VIDTRAIN_NUM_WORKERS, value: "2"}') == 1
    source.write_text(text.replace('value: "2"}', 'value: "5"}', 1))
    folder = copy / ("jobset" if form == "jobset" else "multiworker")
    docs = render(folder)
    if form == "jobset":
        spec = next(d for d in docs if d["kind"] == "JobSet")["spec"]["replicatedJobs"][0]["template"]["spec"]
    else:
        spec = next(d for d in docs if d["kind"] == "Job")["spec"]
    env = {e["name"]: e.get("value") for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert spec["completions"] == spec["parallelism"] == 5 and env["VIDTRAIN_NUM_WORKERS"] == "5"


@pytest.mark.parametrize("form", FORMS)
def test_job_failure_semantics(form):
    job = job_of(form)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    from vidtrain.job import EXIT_CONFIG, EXIT_DIVERGED, EXIT_NO_DATA

    # A retry cannot mend these: bad settings, no usable data, a diverging model.
    fatal = [EXIT_CONFIG, EXIT_NO_DATA, EXIT_DIVERGED]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "vidtrain", "operator": "In",
                                                              "values": fatal}}
    stopped = {"containerName": "vidtrain", "operator": "In", "values": [143]}
    disrupted = [{"type": "DisruptionTarget", "status": "True"}]
    if form == "jobset":  # the child Job fails; the JobSet's rules tell a final failure from a stop
        assert spec["backoffLimit"] == 0 and rules[1:] == [{"action": "FailJob", "onExitCodes": stopped},
                                                          {"action": "FailJob", "onPodConditions": disrupted}]
    else:  # a stop after a checkpoint and an eviction are replaced without counting
        assert {"action": "Ignore", "onExitCodes": stopped} in rules
        assert {"action": "Ignore", "onPodConditions": disrupted} in rules
    if form == "indexed":  # a lost peer makes every survivor exit 1: budgets per index, not one shared
        assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0 and "backoffLimit" not in spec
    if form != "single":  # the chief's success is the Job's
        assert spec["successPolicy"] == {"rules": [{"succeededIndexes": "0"}]}
    # SIGTERM -> checkpoint -> exit 143 takes seconds (tests/test_job.py); leave ample room for big models.
    assert pod["terminationGracePeriodSeconds"] >= 60


def jobset_action(jobset: dict, reason: str, message: str) -> str:
    """What the JobSet controller does when a child Job fails with `reason` and `message`: the first
    rule whose reasons and message patterns both match (an empty list matches anything); none:
    RestartJobSet."""
    for rule in jobset["spec"]["failurePolicy"]["rules"]:
        if rule.get("onJobFailureReasons") and reason not in rule["onJobFailureReasons"]:
            continue
        if rule.get("onJobFailureMessagePatterns") and not any(
                re.search(p, message) for p in rule["onJobFailureMessagePatterns"]):
            continue
        return rule["action"]
    return "RestartJobSet"


def test_the_jobset_fails_for_good_only_on_final_exit_codes_and_restarts_free_after_a_stop():
    """The child Job's failure messages, as the Job controller words them (pkg/controller/job:
    "Container %s for pod %s/%s failed with exit code %v matching %v rule at index %d", "Pod %s/%s has
    condition %v matching %v rule at index %d"), through the JobSet's failure policy."""
    jobset = rendered("jobset", "JobSet")
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["spec"]["failurePolicy"]["maxRestarts"] >= 1
    rules = job_of("jobset")["spec"]["podFailurePolicy"]["rules"]

    def exit_message(code):
        index = next(k for k, r in enumerate(rules) if code in r.get("onExitCodes", {}).get("values", []))
        return (f"Container vidtrain for pod ml/vidtrain-mw-workers-0-1-x failed with exit code {code} matching "
                f"{rules[index]['action']} rule at index {index}")

    evicted = next(k for k, r in enumerate(rules) if "onPodConditions" in r)
    for code in (2, 3, 4):
        assert jobset_action(jobset, "PodFailurePolicy", exit_message(code)) == "FailJobSet"
    assert jobset_action(jobset, "PodFailurePolicy", exit_message(143)) == "RestartJobSetAndIgnoreMaxRestarts"
    assert jobset_action(jobset, "PodFailurePolicy", f"Pod ml/vidtrain-mw-workers-0-1-x has condition "
                         f"DisruptionTarget matching FailJob rule at index {evicted}") == \
        "RestartJobSetAndIgnoreMaxRestarts"
    # exit 1 (a lost peer, a full disk): backoffLimit 0 is exceeded; restart the set, counted
    assert jobset_action(jobset, "BackoffLimitExceeded", "Job has reached the specified backoff limit") == \
        "RestartJobSet"
    assert jobset["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["workers"]}
    assert jobset["spec"]["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}


@pytest.mark.parametrize("form", FORMS)
def test_job_pod_security_resources_and_volumes(form):
    pod = job_of(form)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["name"] == "vidtrain"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsUser"] == dockerfile_user()
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    data = volumes[mounts["/data"]["name"]]["persistentVolumeClaim"]
    assert data["readOnly"] is True and mounts["/data"]["readOnly"] is True
    output = volumes[mounts["/output"]["name"]]["persistentVolumeClaim"]
    assert not output.get("readOnly") and not mounts["/output"].get("readOnly")
    claims = {c["metadata"]["name"] for c in render(FORMS[form]) if c["kind"] == "PersistentVolumeClaim"}
    assert {data["claimName"], output["claimName"]} <= claims
    settings = rendered(form, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    assert settings["VIDTRAIN_DATA_DIR"] == "/data" and settings["VIDTRAIN_OUTPUT_DIR"] == "/output"


GIB = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def quantity(text: str) -> float:
    """Bytes of a Kubernetes quantity ('20Gi', '512M')."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text)).groups()
    return float(number) * GIB.get(unit, 1)


@pytest.mark.parametrize("form", FORMS)
def test_the_frame_cache_fits_its_volume(form):
    """The kubelet evicts a pod whose emptyDir outgrows its sizeLimit: the frame cache's bound
    (the ConfigMap's, or the setting's default) must leave room in the /cache volume."""
    pod = job_of(form)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    settings = rendered(form, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    cache = volumes[mounts[settings["VIDTRAIN_CACHE_DIR"]]["name"]]["emptyDir"]
    bound = float(settings.get("VIDTRAIN_FRAME_CACHE_GB", Settings.model_fields["frame_cache_gb"].default)) * 1e9
    assert bound + 2 * 2**30 <= quantity(cache["sizeLimit"])  # 2 GiB for the demo set


@pytest.mark.parametrize("form", FORMS)
def test_metrics_port_is_named_annotated_and_monitored(form):
    template = job_of(form)["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    port = int(rendered(form, "ConfigMap", "vidtrain-config")["data"]["VIDTRAIN_METRICS_PORT"])
    assert ports["metrics"] == port == int(template["metadata"]["annotations"]["prometheus.io/port"])
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    monitor = rendered(form, "PodMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_configmap_sets_only_known_settings():
    names = {PREFIX + f.upper() for f in Settings.model_fields}
    for config in find("ConfigMap"):
        assert set(config["data"]) <= names, set(config["data"]) - names


@pytest.mark.parametrize("form", ["jobset", "indexed"])
def test_multiworker_pods_get_what_the_entrypoint_needs(form, monkeypatch, tmp_path):
    """The names Kubernetes gives pod 1 of each form, and the TF_CONFIG the real settings make of them."""
    job = job_of(form)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    workers = int(env["VIDTRAIN_NUM_WORKERS"]["value"])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == workers
    assert env["VIDTRAIN_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    grpc = int(env["VIDTRAIN_WORKER_PORT"]["value"])
    if form == "jobset":  # JobSet's headless service is named like the JobSet; its pods' label says so
        assert env["VIDTRAIN_WORKER_SERVICE"]["valueFrom"]["fieldRef"]["fieldPath"] == \
            "metadata.labels['jobset.sigs.k8s.io/jobset-name']"
        job_name, service = "vidtrain-mw-workers-0", "vidtrain-mw"
    else:
        service = env["VIDTRAIN_WORKER_SERVICE"]["value"]
        headless = rendered(form, "Service", service)
        assert headless["spec"]["clusterIP"] == "None" and pod["subdomain"] == service
        assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
        assert grpc in [p["port"] for p in headless["spec"]["ports"]]
        job_name = job["metadata"]["name"]
    from vidtrain.settings import load

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("VIDTRAIN_JOB_NAME", job_name)
    monkeypatch.setenv("VIDTRAIN_WORKER_SERVICE", service)
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    for name in ("VIDTRAIN_NUM_WORKERS", "VIDTRAIN_WORKER_PORT"):
        monkeypatch.setenv(name, env[name]["value"])
    assert load([]).cluster() == {
        "cluster": {"worker": [f"{job_name}-{i}.{service}:{grpc}" for i in range(workers)]},
        "task": {"type": "worker", "index": 1}}


def test_the_kueue_component_queues_either_form_whole():
    for form, kind in (("jobset", "JobSet"), ("indexed", "Job"), ("single", "Job")):
        doc = rendered(form, kind, components=("kueue",))
        assert doc["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "vidtrain"
        # No partial admission is asked for: Kueue admits all pods or none.
        assert "kueue.x-k8s.io/job-min-parallelism" not in doc["metadata"].get("annotations", {})


def test_podmonitor_and_rule_have_their_required_fields():
    monitor = find("PodMonitor")[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"] and monitor["spec"]["podMetricsEndpoints"]
    rule = find("PrometheusRule")[0]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["spec"]["groups"][0]["rules"]


def test_alert_rules_are_valid_and_pass_their_unit_tests(tmp_path):
    """promtool checks the rule groups of k8s/monitoring/prometheusrule.yaml and runs rules-test.yaml,
    which fires and resolves every alert."""
    from jobs import tool

    rule = find("PrometheusRule")[0]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    tests = yaml.safe_load((K8S / "monitoring" / "rules-test.yaml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert tested == {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}  # every alert fires in a test
    (tmp_path / "rules-test.yaml").write_text((K8S / "monitoring" / "rules-test.yaml").read_text())
    check = subprocess.run([tool("promtool"), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run([tool("promtool"), "test", "rules", "rules-test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


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
