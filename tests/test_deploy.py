"""Dockerfile and Kubernetes manifests, checked offline (no Docker engine or cluster here)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from jobs import KUBECTL, kubelet_env

from vidtrain.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
BUILT_IN = {"v1", "batch/v1", "apps/v1"}  # API groups whose schemas kubernetes-validate bundles

FORMS = {"single": K8S, "jobset": K8S / "jobset", "indexed": K8S / "multiworker", "prepare": K8S / "prepare"}
TRAINING = ("single", "jobset", "indexed")
COMPONENTS = ("gpu", "kueue", "monitoring")
NOT_MANIFESTS = {"kustomization.yaml", "rules-test.yaml", "kustomizeconfig.yaml"}
# The oldest and the newest Kubernetes each form is checked against: Job podFailurePolicy (GA in 1.31),
# successPolicy (beta, on by default, in 1.31; GA in 1.33), backoffLimitPerIndex (beta in 1.29).
KUBERNETES = ("1.31", "1.37")
CRDS = {"JobSet": ["jobset-v0.6.0.yaml", "jobset-v0.12.0.yaml"],
        "PodMonitor": ["prometheus-operator-v0.70.0-podmonitors.yaml", "prometheus-operator-v0.93.0-podmonitors.yaml"],
        "PrometheusRule": ["prometheus-operator-v0.70.0-prometheusrules.yaml",
                           "prometheus-operator-v0.93.0-prometheusrules.yaml"],
        **{kind: [f"kueue-{v}-{kind.lower()}s.yaml" for v in ("v0.15.0", "v0.19.2")]
           for kind in ("ClusterQueue", "LocalQueue", "ResourceFlavor")}}


def documents():
    """(file, document) for every manifest under k8s/ (not kustomizations or their configuration)."""
    return [(path, doc) for path in sorted(K8S.rglob("*.yaml")) if path.name not in NOT_MANIFESTS
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def find(kind, name=None):
    found = [doc for _, doc in documents() if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''}"
    return found


def render(folder: Path, components: tuple[str, ...] = (), **overlay) -> list[dict]:
    """`kubectl kustomize` of a form, through an overlay like a user's when `components` or
    `overlay` (kustomization fields: namePrefix, namespace, configMapGenerator, images...) are given."""
    target = folder
    if components or overlay:
        target = ROOT / ".cache" / "overlay" / f"{folder.name}-{abs(hash((components, repr(overlay))))}"
        target.mkdir(parents=True, exist_ok=True)
        (target / "kustomization.yaml").write_text(yaml.safe_dump({
            "resources": [os.path.relpath(folder, target)],
            "components": [os.path.relpath(K8S / "components" / c, target) for c in components], **overlay}))
    result = subprocess.run([KUBECTL, "kustomize", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def rendered(form: str, kind: str, name: str | None = None, components=(), **overlay) -> dict:
    docs = [d for d in render(FORMS[form], components, **overlay)
            if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(docs) == 1, f"{form}: {kind} {name}"
    return docs[0]


def jobs_of(form: str, components=(), **overlay) -> list[dict]:
    """The batch/v1 Jobs a form makes: the Job itself, or the Jobs of the JobSet's replicated jobs (the
    chief's, then the workers'), named as JobSet names them."""
    docs = render(FORMS[form], components, **overlay)
    if form != "jobset":
        return [d for d in docs if d["kind"] == "Job"]
    (jobset,) = [d for d in docs if d["kind"] == "JobSet"]
    return [{"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": f"{jobset['metadata']['name']}-{replicated['name']}-0"},
             "spec": replicated["template"]["spec"]} for replicated in jobset["spec"]["replicatedJobs"]]


def job_of(form: str, components=(), **overlay) -> dict:
    """The Job whose pod writes the outputs: the Job itself, or the JobSet's chief Job."""
    return jobs_of(form, components, **overlay)[0]


def settings_overlay(**job_settings) -> dict:
    """An overlay's fields that set the Jobs' own settings (vidtrain-job), as docs/kubernetes.md shows."""
    return {"configMapGenerator": [{"name": "vidtrain-job", "behavior": "merge",
                                    "literals": [f"{k.replace('_', '-')}={v}" for k, v in job_settings.items()]}]}


USER = dict(namePrefix="team-", namespace="ml",
            images=[{"name": "vidtrain", "newName": "registry.example.com/ml/vidtrain"}])


@pytest.mark.parametrize("components", [(), ("gpu",), ("kueue",), ("monitoring",), COMPONENTS], ids=str)
@pytest.mark.parametrize("form", FORMS)
def test_every_form_renders_alone_and_with_every_component(form, components):
    kinds = [d["kind"] for d in render(FORMS[form], components)]
    expected = {"single": "Job", "jobset": "JobSet", "indexed": "Job", "prepare": "Job"}[form]
    assert kinds.count(expected) == 1 and {"ConfigMap", "PersistentVolumeClaim"} <= set(kinds)
    assert ({"PodMonitor", "PrometheusRule"} <= set(kinds)) == ("monitoring" in components)


def test_a_cluster_without_the_prometheus_operator_gets_no_monitoring_objects():
    """`kubectl apply -k k8s/` on a stock cluster: nothing of a CRD it lacks (a GitOps sync fails whole)."""
    for form in FORMS:
        assert {d["apiVersion"].split("/")[0] for d in render(FORMS[form])} <= {"v1", "batch", "jobset.x-k8s.io"}


@pytest.mark.parametrize("version", KUBERNETES)
def test_built_in_kinds_pass_strict_schema_validation(tmp_path, version):
    """Every built-in document of every rendered form, the JobSet's Job template included (as a Job), for the
    oldest and the newest Kubernetes the forms support."""
    docs = []
    for form in FORMS:
        for components in ((), COMPONENTS):
            docs += [d for d in render(FORMS[form], components, **USER) if d["apiVersion"] in BUILT_IN]
            if form == "jobset":
                docs += jobs_of(form, components, **USER)
    docs += [d for folder in ("data", "data-rwx") for d in render(K8S / folder)]
    assert {d["kind"] for d in docs} == {"ConfigMap", "PersistentVolumeClaim", "Job", "Service"}
    files = []
    for k, doc in enumerate(docs):
        files.append(tmp_path / f"{k}.yaml")
        files[-1].write_text(yaml.safe_dump(doc))
    result = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict",
                             "--kubernetes-version", version, *map(str, files)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(files)


def test_custom_resources_pass_their_controllers_crds_with_nothing_pruned():
    """The JobSet against JobSet v0.6.0's and v0.12.0's CRDs, the monitors and rules against the Prometheus
    Operator's, the Kueue queues against Kueue's v1beta2: a field an older controller does not know would
    be dropped silently by the API server (JobSet v0.9 dropped onJobFailureMessagePatterns)."""
    from schemas import problems

    docs = [d for form in FORMS for components in ((), COMPONENTS) for d in render(FORMS[form], components, **USER)]
    docs += render(K8S / "kueue")
    custom = [d for d in docs if d["kind"] in CRDS]
    assert {d["kind"] for d in custom} == set(CRDS)
    for doc in custom:
        for crd in CRDS[doc["kind"]]:
            assert problems(doc, crd) == [], f"{doc['kind']} {doc['metadata']['name']} against {crd}"


def test_the_schema_check_finds_a_field_an_old_controller_drops():
    """A test that can fail: JobSet v0.10's onJobFailureMessagePatterns is pruned by v0.6.0's CRD."""
    from schemas import problems

    jobset = rendered("jobset", "JobSet")
    jobset["spec"]["failurePolicy"]["rules"][0]["onJobFailureMessagePatterns"] = ["exit code [234]"]
    assert problems(jobset, "jobset-v0.6.0.yaml") == [
        ".spec.failurePolicy.rules[0].onJobFailureMessagePatterns: pruned (not in the schema)"]
    assert problems(jobset, "jobset-v0.12.0.yaml") == []


def test_kustomizations_name_existing_resources():
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for resource in spec.get("resources", []) + spec.get("components", []) + spec.get("configurations", []):
            assert (kustomization.parent / resource).exists(), f"{kustomization}: {resource}"


@pytest.mark.parametrize("form", TRAINING)
def test_a_users_overlay_renames_everything_and_every_reference_follows(form):
    """namePrefix and namespace over a form, as a team's overlay has them: every name a pod uses (its
    ConfigMap, its claims, its headless service, as subdomain and as VIDTRAIN_WORKER_SERVICE) is the
    renamed object's, and the PodMonitor still selects the pods."""
    docs = render(FORMS[form], ("monitoring",), **USER)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert all(d["metadata"].get("namespace") == "ml" for d in docs)
    assert all(name.startswith("team-") for _, name in names)
    monitor = next(d for d in docs if d["kind"] == "PodMonitor")
    for job in jobs_of(form, ("monitoring",), **USER):
        pod = job["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert ("ConfigMap", container["envFrom"][0]["configMapRef"]["name"]) in names
        for volume in pod["volumes"]:
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names or claim == "team-vidtrain-data", claim  # k8s/data's
        env = {e["name"]: e for e in container.get("env", [])}
        if form == "indexed":
            service = [n for k, n in names if k == "Service"]
            assert service == ["team-vidtrain-workers"]
            assert pod["subdomain"] == env["VIDTRAIN_WORKER_SERVICE"]["value"] == service[0]
        if form == "jobset":  # the JobSet makes the service, named like itself; the pods read it from a label
            labels = {"jobset.sigs.k8s.io/jobset-name": "team-vidtrain-mw"}
            env = kubelet_env({"labels": labels}, container)
            assert (env["VIDTRAIN_WORKER_SERVICE"], env["VIDTRAIN_CHIEF_JOB"], env["VIDTRAIN_JOB_NAME"]) == (
                "team-vidtrain-mw", "team-vidtrain-mw-chief-0", "team-vidtrain-mw-workers-0")
        labels = job["spec"]["template"]["metadata"]["labels"]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    data = render(K8S / "data", namePrefix="team-", namespace="ml")  # the data claim, renamed the same way
    assert ("PersistentVolumeClaim", "team-vidtrain-data") in {(d["kind"], d["metadata"]["name"]) for d in data}


@pytest.mark.parametrize("form, key", [("jobset", "jobset_workers"), ("indexed", "workers")])
def test_the_worker_count_is_set_in_one_place(form, key):
    """An overlay that changes only the form's count in vidtrain-job (with the settings component, as
    docs/kubernetes.md shows): completions, parallelism and every pod's VIDTRAIN_NUM_WORKERS follow (the
    JobSet's chief, in a Job of its own, is one more pod: NUM_WORKERS counts the workers besides it)."""
    jobs = jobs_of(form, ("settings",), **USER, **settings_overlay(**{key: 5}))
    workers = jobs[-1]["spec"]
    assert workers["completions"] == workers["parallelism"] == 5
    for job in jobs:
        env = {e["name"]: e.get("value") for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["VIDTRAIN_NUM_WORKERS"] == "5"
    if form == "jobset":
        assert jobs[0]["spec"]["completions"] == jobs[0]["spec"]["parallelism"] == 1  # the chief
    assert jobs_of(form)[-1]["spec"]["completions"] == {"jobset": 1, "indexed": 2}[form]  # as shipped: 2 processes


@pytest.mark.parametrize("form", FORMS)
def test_the_deadline_is_a_setting_of_the_forms(form):
    assert all(job["spec"]["activeDeadlineSeconds"] == 7 * 86400 for job in jobs_of(form))
    jobs = jobs_of(form, ("settings",), **settings_overlay(active_deadline_seconds=3600))
    assert all(job["spec"]["activeDeadlineSeconds"] == 3600 for job in jobs)


def test_the_image_is_named_in_one_place_and_the_gpu_component_swaps_a_renamed_one():
    """The registry: the overlay's `images` (newName); the tag says cpu or gpu. The GPU component puts the
    GPU tag on an image an inner overlay already renamed (it stayed the CPU image, with GPU decoding)."""
    inner = ROOT / ".cache" / "overlay" / "inner-renamed"
    inner.mkdir(parents=True, exist_ok=True)
    (inner / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(FORMS["jobset"], inner)], "images": USER["images"]}))
    for folder in (FORMS["jobset"], inner):
        pod = job_of_folder(folder, ("gpu",))["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["image"].endswith("vidtrain:gpu-0.1.0")
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert job_of_folder(inner, ("gpu",))["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example.com/ml/vidtrain:gpu-0.1.0"
    for form in FORMS:
        for job in jobs_of(form, **USER):
            assert job["spec"]["template"]["spec"]["containers"][0]["image"] == \
                "registry.example.com/ml/vidtrain:cpu-0.1.0"


def job_of_folder(folder: Path, components=()) -> dict:
    """The form's Job, or the JobSet's workers' Job (its last)."""
    docs = render(folder, components)
    doc = next(d for d in docs if d["kind"] in ("Job", "JobSet") and d["metadata"]["name"] != "vidtrain-fill-data")
    return doc if doc["kind"] == "Job" else {"spec": doc["spec"]["replicatedJobs"][-1]["template"]["spec"]}


def test_stock_cluster_defaults_cpu_image_no_gpu_no_shm_and_the_decode_device_is_the_images():
    for pod in (job["spec"]["template"]["spec"] for form in FORMS for job in jobs_of(form)):
        container = pod["containers"][0]
        assert container["image"] == "vidtrain:cpu-0.1.0"
        assert "nvidia.com/gpu" not in str(container["resources"]) and "tolerations" not in pod
        assert "/dev/shm" not in [m["mountPath"] for m in container["volumeMounts"]]
    for form in FORMS:
        assert "VIDTRAIN_DECODE_DEVICE" not in rendered(form, "ConfigMap", "vidtrain-config")["data"]
    gpu_stage = (ROOT / "Dockerfile").read_text().split(" AS gpu", 1)[1].split("\nFROM ", 1)[0]
    assert "VIDTRAIN_DECODE_DEVICE=gpu" in gpu_stage


def test_the_monitoring_release_label_is_a_setting():
    for kind in ("PodMonitor", "PrometheusRule"):
        assert rendered("single", kind, components=("monitoring",))["metadata"]["labels"]["release"] == \
            "kube-prometheus-stack"
        assert rendered("single", kind, components=("monitoring",),
                        **settings_overlay(prometheus_release="prom"))["metadata"]["labels"]["release"] == "prom"


def test_the_output_claim_is_read_write_once_where_only_the_chief_mounts_it():
    """The single Job, and the JobSet, whose chief alone mounts the output (its workers get what they need
    from the chief): ReadWriteOnce, which every StorageClass offers. The Indexed Job's pods share one
    template, so all mount it: ReadWriteMany."""
    modes = {form: {c["metadata"]["name"]: c["spec"]["accessModes"] for c in render(FORMS[form])
                    if c["kind"] == "PersistentVolumeClaim"} for form in TRAINING}
    assert modes["single"] == modes["jobset"] == {"vidtrain-output": ["ReadWriteOnce"]}
    assert modes["indexed"] == {"vidtrain-output": ["ReadWriteMany"]}
    chief, workers = (job["spec"]["template"]["spec"] for job in jobs_of("jobset"))
    claims = [{v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
              for pod in (chief, workers)]
    assert claims == [{"vidtrain-data", "vidtrain-output"}, {"vidtrain-data"}]
    data = {folder: [c["spec"]["accessModes"] for c in render(K8S / folder) if c["kind"] == "PersistentVolumeClaim"]
            for folder in ("data", "data-rwx")}
    assert data == {"data": [["ReadWriteOnce"]], "data-rwx": [["ReadWriteMany"]]}


def test_the_data_step_is_its_own_kustomization_and_the_training_forms_only_mount_it():
    data = render(K8S / "data")
    assert sorted((d["kind"], d["metadata"]["name"]) for d in data) == [
        ("Job", "vidtrain-fill-data"), ("PersistentVolumeClaim", "vidtrain-data")]
    fill = next(d for d in data if d["kind"] == "Job")["spec"]["template"]["spec"]
    assert not fill["containers"][0]["volumeMounts"][0].get("readOnly")  # it writes the claim
    for form in FORMS:
        claims = {d["metadata"]["name"] for d in render(FORMS[form]) if d["kind"] == "PersistentVolumeClaim"}
        assert "vidtrain-data" not in claims
        for job in jobs_of(form):
            pod = job["spec"]["template"]["spec"]
            (data_volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") ==
                              "vidtrain-data"]
            assert data_volume["persistentVolumeClaim"]["readOnly"] is True
    assert float(rendered("single", "ConfigMap", "vidtrain-config")["data"]["VIDTRAIN_DATA_WAIT_S"]) > 0


@pytest.mark.parametrize("form", FORMS)
def test_ephemeral_storage_is_requested_for_the_scratch_volumes_and_fits_a_common_node(form):
    for job in jobs_of(form):
        check_ephemeral_storage(job["spec"]["template"]["spec"])


def check_ephemeral_storage(pod: dict) -> None:
    scratch = sum(quantity(v["emptyDir"]["sizeLimit"]) for v in pod["volumes"] if "emptyDir" in v)
    resources = pod["containers"][0]["resources"]
    assert quantity(resources["requests"]["ephemeral-storage"]) >= scratch
    assert quantity(resources["limits"]["ephemeral-storage"]) >= scratch
    # A 20 GiB node disk leaves about 16 GiB allocatable (kubelet reserve, eviction threshold).
    assert quantity(resources["requests"]["ephemeral-storage"]) <= 16 * 2**30


def test_the_kueue_queues_cover_every_resource_the_pods_request():
    """A ClusterQueue that does not cover a resource a pod requests leaves the workload pending for good."""
    queue = next(d for d in render(K8S / "kueue") if d["kind"] == "ClusterQueue")
    covered = {r for group in queue["spec"]["resourceGroups"] for r in group["coveredResources"]}
    local = next(d for d in render(K8S / "kueue") if d["kind"] == "LocalQueue")
    assert local["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert local["spec"]["clusterQueue"] == queue["metadata"]["name"]
    for form in FORMS:
        for components in (("kueue",), ("kueue", "gpu")):
            jobs = jobs_of(form, components)
            requested = set()
            for container in (c for job in jobs for c in job["spec"]["template"]["spec"]["containers"]):
                for kind in ("requests", "limits"):
                    requested |= set(container["resources"].get(kind, {}))
            assert requested <= covered, requested - covered
            queued = jobs[0] if form != "jobset" else rendered(form, "JobSet", components=components)
            labels = queued["metadata"]["labels"]
            assert labels["kueue.x-k8s.io/queue-name"] == local["metadata"]["name"]


@pytest.mark.parametrize("form", FORMS)
def test_job_failure_semantics(form):
    for job in jobs_of(form):
        check_failure_semantics(form, job)


def check_failure_semantics(form: str, job: dict) -> None:
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    from vidtrain.job import EXIT_CONFIG, EXIT_DIVERGED, EXIT_NO_DATA

    # A retry cannot mend these: bad settings, no usable data, a diverging model (prepare: no divergence).
    fatal = [EXIT_CONFIG, EXIT_NO_DATA] + ([EXIT_DIVERGED] if form != "prepare" else [])
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "vidtrain", "operator": "In",
                                                              "values": fatal}}
    # A stop after a checkpoint and an eviction are replaced without counting, in every form: with what
    # JobSet v0.6 honours, the child Job does it itself (its pods stop together, and start again together).
    stopped = {"containerName": "vidtrain", "operator": "In", "values": [143]}
    assert {"action": "Ignore", "onExitCodes": stopped} in rules
    assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
    if form == "jobset":  # any other failure fails the child Job at once: the JobSet restarts the set
        assert spec["backoffLimit"] == 0
    if form == "indexed":  # a lost peer makes every survivor exit 1: budgets per index, not one shared
        assert spec["backoffLimitPerIndex"] >= 1 and spec["maxFailedIndexes"] == 0 and "backoffLimit" not in spec
    if form == "indexed":  # the chief's success is the Job's (the JobSet's chief has a Job of its own)
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


def job_outcome(job: dict, exit_code: int | None, disrupted: bool = False) -> tuple[str, str]:
    """(what the Job controller does with a pod that failed so, the Job's failure reason if it fails):
    the first podFailurePolicy rule that matches ("Ignore", "FailJob", "Count"); a failure counted
    beyond backoffLimit (0) fails the Job with BackoffLimitExceeded."""
    for rule in job["spec"]["podFailurePolicy"]["rules"]:
        exits = rule.get("onExitCodes", {})
        matched = exit_code is not None and exit_code in exits.get("values", [])
        if matched or (disrupted and "onPodConditions" in rule):
            return rule["action"], "PodFailurePolicy" if rule["action"] == "FailJob" else ""
    return "Count", "BackoffLimitExceeded" if job["spec"].get("backoffLimit", 6) == 0 else ""


def test_the_jobset_fails_for_good_only_on_final_exit_codes_and_restarts_free_after_a_stop():
    """Each exit through the child Job's podFailurePolicy, then the JobSet's failure policy (rules by failure
    reason only, which JobSet v0.6 honours): 2, 3, 4 fail the JobSet; 143 and a disruption are replaced
    by the Job, uncounted; 1 restarts the set, counted against maxRestarts."""
    jobset = rendered("jobset", "JobSet")
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["spec"]["failurePolicy"]["maxRestarts"] >= 1
    for job in jobs_of("jobset"):  # the chief's Job and the workers'
        for code in (2, 3, 4):
            action, reason = job_outcome(job, code)
            assert action == "FailJob" and jobset_action(jobset, reason, "") == "FailJobSet"
        assert job_outcome(job, 143) == ("Ignore", "") and job_outcome(job, None, disrupted=True) == ("Ignore", "")
        action, reason = job_outcome(job, 1)
        assert reason == "BackoffLimitExceeded" and jobset_action(jobset, reason, "") == "RestartJobSet"
    assert all("onJobFailureMessagePatterns" not in rule for rule in jobset["spec"]["failurePolicy"]["rules"])
    assert jobset["spec"]["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["chief"]}
    assert jobset["spec"]["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}


@pytest.mark.parametrize("form", FORMS)
def test_job_pod_security_resources_and_volumes(form):
    for chief, job in zip((True, False), jobs_of(form)):
        check_pod(form, job["spec"]["template"]["spec"], writes_outputs=chief)


def check_pod(form: str, pod: dict, writes_outputs: bool) -> None:
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
    assert data["readOnly"] is True and mounts["/data"]["readOnly"] is True and data["claimName"] == "vidtrain-data"
    written = "/prepared" if form == "prepare" else "/output"
    if not writes_outputs:  # the JobSet's workers: the chief alone reads and writes the output
        assert written not in mounts
        return
    output = volumes[mounts[written]["name"]]["persistentVolumeClaim"]
    assert not output.get("readOnly") and not mounts[written].get("readOnly")
    claims = {c["metadata"]["name"] for c in render(FORMS[form]) if c["kind"] == "PersistentVolumeClaim"}
    assert output["claimName"] in claims
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
    for job in jobs_of(form):
        check_cache_volume(form, job["spec"]["template"]["spec"])


def check_cache_volume(form: str, pod: dict) -> None:
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    settings = rendered(form, "ConfigMap", container["envFrom"][0]["configMapRef"]["name"])["data"]
    settings |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}  # a container's own win
    cache = volumes[mounts[settings["VIDTRAIN_CACHE_DIR"]]["name"]]["emptyDir"]
    bound = float(settings.get("VIDTRAIN_FRAME_CACHE_GB", Settings.model_fields["frame_cache_gb"].default)) * 1e9
    assert bound + 2 * 2**30 <= quantity(cache["sizeLimit"])  # 2 GiB for the demo set


@pytest.mark.parametrize("form", FORMS)
def test_metrics_port_is_named_annotated_and_monitored(form):
    for job in jobs_of(form):
        check_metrics_port(form, job["spec"]["template"])


def check_metrics_port(form: str, template: dict) -> None:
    ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
    port = int(rendered(form, "ConfigMap", "vidtrain-config")["data"]["VIDTRAIN_METRICS_PORT"])
    assert ports["metrics"] == port == int(template["metadata"]["annotations"]["prometheus.io/port"])
    assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    monitor = rendered(form, "PodMonitor", components=("monitoring",))
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_configmap_sets_only_known_settings():
    names = {PREFIX + f.upper() for f in Settings.model_fields}
    config = find("ConfigMap", "vidtrain-config")[0]
    assert set(config["data"]) <= names, set(config["data"]) - names


def test_indexed_job_pods_get_what_the_entrypoint_needs(monkeypatch, tmp_path):
    """The names Kubernetes gives pod 1 of the Indexed Job, and the TF_CONFIG the real settings make of them."""
    from vidtrain.settings import load

    job = job_of("indexed")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    workers = int(env["VIDTRAIN_NUM_WORKERS"]["value"])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == workers
    assert env["VIDTRAIN_JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.labels['batch.kubernetes.io/job-name']"
    grpc = int(env["VIDTRAIN_WORKER_PORT"]["value"])
    service = env["VIDTRAIN_WORKER_SERVICE"]["value"]
    headless = rendered("indexed", "Service", service)
    assert headless["spec"]["clusterIP"] == "None" and pod["subdomain"] == service
    assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert grpc in [p["port"] for p in headless["spec"]["ports"]]
    job_name = job["metadata"]["name"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    monkeypatch.setenv("VIDTRAIN_JOB_NAME", job_name)
    monkeypatch.setenv("VIDTRAIN_WORKER_SERVICE", service)
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    for name in ("VIDTRAIN_NUM_WORKERS", "VIDTRAIN_WORKER_PORT"):
        monkeypatch.setenv(name, env[name]["value"])
    assert load([]).cluster() == {
        "cluster": {"worker": [f"{job_name}-{i}.{service}:{grpc}" for i in range(workers)]},
        "task": {"type": "worker", "index": 1}}


def test_jobset_pods_get_what_the_entrypoint_needs(monkeypatch, tmp_path):
    """The JobSet's chief and workers, with the environment the kubelet makes from their templates (the
    JobSet's name from a label) and the host names JobSet gives them: one TF_CONFIG, the chief first,
    and only the chief writes the outputs."""
    import socket

    from vidtrain.settings import load

    jobset = rendered("jobset", "JobSet", components=("settings",), **settings_overlay(jobset_workers=2))
    service = jobset["metadata"]["name"]
    assert jobset["spec"]["network"]["enableDNSHostnames"] is True  # <job>-<index>.<jobset>
    chief_job, workers_job = (f"{service}-{r['name']}-0" for r in jobset["spec"]["replicatedJobs"])
    pods = [(chief_job, 0)] + [(workers_job, i) for i in range(2)]
    cluster = {"chief": [f"{chief_job}-0.{service}:2222"], "worker": [f"{workers_job}-{i}.{service}:2222"
                                                                       for i in range(2)]}
    for replicated, (job, index) in zip([0, 1, 1], pods):
        container = jobset["spec"]["replicatedJobs"][replicated]["template"]["spec"]["template"]["spec"][
            "containers"][0]
        env = kubelet_env({"labels": {"jobset.sigs.k8s.io/jobset-name": service}}, container)
        for name in [n for n in os.environ if n.startswith(PREFIX)]:
            monkeypatch.delenv(name)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(index))
        monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path / "output" if job == chief_job else "/nonexistent"))
        monkeypatch.setattr(socket, "gethostname", lambda host=f"{job}-{index}": host)
        settings = load([])
        task = {"type": "chief", "index": 0} if job == chief_job else {"type": "worker", "index": index}
        assert settings.cluster() == {"cluster": cluster, "task": task}
        assert settings.writes_outputs == (job == chief_job) and settings.ranks()[1] == cluster["chief"] + \
            cluster["worker"]


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


def docs_overlays() -> dict[str, dict]:
    """The overlays docs/kubernetes.md shows, by folder: each `# <folder>/kustomization.yaml` block as
    written, and each `# add to <folder>/kustomization.yaml` block merged into it as a user would (lists
    extended, a generator's literals added to the entry of the same name)."""
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    overlays: dict[str, dict] = {}
    for block in re.findall(r"^( *)```yaml\n(.*?)^\1```", text, re.S | re.M):
        indent, body = block
        body = "\n".join(line[len(indent):] for line in body.splitlines())
        first = body.splitlines()[0]
        spec = yaml.safe_load(body)
        if m := re.fullmatch(r"# ([\w-]+)/kustomization\.yaml", first):
            overlays[m[1]] = spec
        elif m := re.fullmatch(r"# add to ([\w-]+)/kustomization\.yaml", first):
            base = overlays.setdefault(m[1] + "+", yaml.safe_load(yaml.safe_dump(overlays[m[1]])))
            for key, items in spec.items():
                for item in items:
                    same = [g for g in base.get(key, []) if key == "configMapGenerator" and g["name"] == item["name"]]
                    if same:
                        same[0]["literals"] += item["literals"]
                    else:
                        base.setdefault(key, []).append(item)
    return overlays


def render_docs_overlay(name: str, spec: dict) -> list[dict]:
    """An overlay of docs/kubernetes.md in a folder beside a checkout of vidtrain, as the page lays it out."""
    target = ROOT / ".cache" / "overlay" / "docs" / name.replace("+", "-plus")
    target.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(spec).replace("../vidtrain/", os.path.relpath(ROOT, target) + "/")
    (target / "kustomization.yaml").write_text(text)
    result = subprocess.run([KUBECTL, "kustomize", str(target)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_overlays_docs_kubernetes_shows_render_and_do_what_it_says():
    overlays = docs_overlays()
    assert set(overlays) == {"my-data", "my-vidtrain", "my-vidtrain+", "my-vidtrain-4", "my-vidtrain-prepared"}
    data = render_docs_overlay("my-data", overlays["my-data"])
    (fill,) = [d for d in data if d["kind"] == "Job"]
    assert fill["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"].endswith("gestures.tar.gz")

    docs = render_docs_overlay("my-vidtrain", overlays["my-vidtrain"])
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    job = by_kind["Job", "team-vidtrain"]
    pod = job["spec"]["template"]["spec"]
    assert job["metadata"]["namespace"] == "ml" and job["spec"]["activeDeadlineSeconds"] == 172800
    assert pod["containers"][0]["image"] == "registry.example.com/ml/vidtrain:cpu-0.1.0"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "team-vidtrain-data" == \
        next(d for d in data if d["kind"] == "PersistentVolumeClaim")["metadata"]["name"]
    config = by_kind["ConfigMap", pod["containers"][0]["envFrom"][0]["configMapRef"]["name"]]["data"]
    assert config["VIDTRAIN_EPOCHS"] == "30" and config["VIDTRAIN_FINAL_MODEL"] == "best"
    assert by_kind["PodMonitor", "team-vidtrain"]["metadata"]["labels"]["release"] == "prom"

    more = render_docs_overlay("my-vidtrain+", overlays["my-vidtrain+"])
    (job,) = [d for d in more if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "my-footage"
    assert pod["volumes"][2]["emptyDir"]["sizeLimit"] == "40Gi"
    assert pod["containers"][0]["resources"]["limits"]["ephemeral-storage"] == "42Gi"
    (config,) = [d["data"] for d in more if d["kind"] == "ConfigMap" and "vidtrain-config" in d["metadata"]["name"]]
    assert config["VIDTRAIN_FRAME_CACHE_GB"] == "36" and config["VIDTRAIN_EPOCHS"] == "30"

    (jobset,) = [d for d in render_docs_overlay("my-vidtrain-4", overlays["my-vidtrain-4"]) if d["kind"] == "JobSet"]
    chief, workers = (r["template"]["spec"] for r in jobset["spec"]["replicatedJobs"])
    assert workers["completions"] == workers["parallelism"] == 3 and chief["completions"] == 1  # 4 processes
    for job in (chief, workers):
        env = {e["name"]: e.get("value") for e in job["template"]["spec"]["containers"][0]["env"]}
        assert env["VIDTRAIN_NUM_WORKERS"] == "3"

    prepared = render_docs_overlay("my-vidtrain-prepared", overlays["my-vidtrain-prepared"])
    (job,) = [d for d in prepared if d["kind"] == "Job"]
    copy = rendered("prepare", "PersistentVolumeClaim", "vidtrain-prepared")["metadata"]["name"]  # k8s/prepare's
    assert job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == f"team-{copy}"
    (config,) = [d["data"] for d in prepared if d["kind"] == "ConfigMap" and "vidtrain-config" in d["metadata"]["name"]]
    settings = Settings(_env_file=None, _cli_parse_args=[], **{k[len(PREFIX):].lower(): v for k, v in config.items()
                                                               if v != ""})
    assert settings.data_dir is None and str(settings.train_manifest) == "/data/train.csv"
