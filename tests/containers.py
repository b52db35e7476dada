"""Helpers for the image checks (`make image-test`): podman used as a `docker run` user would,
and the Kubernetes manifests turned into the pods the Job controller would create, for
`podman kube play`. The image is built by `make image` (image/build.sh)."""

import contextlib
import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from jobs import KUBECTL, kubelet_env

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("VIDTRAIN_TEST_IMAGE", "localhost/vidtrain:test")
ENV = os.environ | {"CONTAINERS_CONF": str(ROOT / "image" / "containers.conf")}
NOBODY = 65534
# Small enough for two cores: 4 frames of 32x32, batches of 4, 2 epochs.
SMALL = {"VIDTRAIN_FRAMES": "4", "VIDTRAIN_HEIGHT": "32", "VIDTRAIN_WIDTH": "32", "VIDTRAIN_BATCH_SIZE": "4",
         "VIDTRAIN_EPOCHS": "2", "VIDTRAIN_LOADER_WORKERS": "1", "VIDTRAIN_PREFETCH_BATCHES": "2"}


@pytest.fixture(scope="module")
def image():
    """The image under test; the image test modules use it autouse."""
    assert podman("image", "exists", IMAGE, check=False).returncode == 0, f"{IMAGE} missing: `make image` builds it"
    return IMAGE


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert not check or result.returncode == 0, f"podman {' '.join(args)} -> {result.returncode}: {result.stderr}"
    return result


def exit_code(container: str, timeout: float) -> int:
    """Wait for the container to exit; its exit code."""
    return int(podman("wait", container, timeout=timeout).stdout.split()[0])


def logs(container: str) -> str:
    result = podman("logs", container, check=False)
    return result.stdout + result.stderr


def env_args(env: dict) -> list[str]:
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


@contextlib.contextmanager
def shared_dir(prefix: str):
    """A host folder any user can enter and the image's uid 10001 can write, as a user gives
    `docker run -v <folder>:/output` (pytest's own tmp folders are private to root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/var/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def closed_modes(root: Path) -> list[str]:
    """Files under `root` that others may not read, folders they may not enter."""
    def wanted(p: Path) -> int:
        return 0o005 if p.is_dir() else 0o004

    return [f"{p} {oct(p.stat().st_mode & 0o777)}" for p in [root, *root.rglob("*")]
            if p.stat().st_mode & wanted(p) != wanted(p)]


def unreadable_by_another_user(root: Path) -> list[str]:
    """What a different host user cannot read under `root`: by mode bits, then by really
    reading every file as `nobody`."""
    read = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                           "find", str(root), "-type", "f", "-exec", "cat", "{}", "+"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return closed_modes(root) + ([read.stderr] if read.returncode else [])


# -- Kubernetes -------------------------------------------------------------------------------------
SMALL_RESOURCES = {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}


def render(tmp_path: Path, base: str, settings: dict, env: dict | None = None) -> list[dict]:
    """`kubectl kustomize` of a small overlay on k8s/<base>: the image under test, the given
    settings merged into the ConfigMap, resources a 2-core machine has; `env` replaces values of
    the worker container's own env (a JobSet's or Indexed Job's)."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    pod_paths = {"Job": ["/spec/template/spec"],
                 "JobSet": [f"/spec/replicatedJobs/{i}/template/spec/template/spec" for i in (0, 1)]}
    patches = [{"patch": yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                         "metadata": {"name": "vidtrain-config"}, "data": settings})}]
    for kind, paths in pod_paths.items():
        patches.append({"target": {"kind": kind}, "patch": yaml.safe_dump(
            [{"op": "replace", "path": f"{path}/containers/0/resources", "value": SMALL_RESOURCES} for path in paths])})
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "k8s" / base, overlay)],
        "images": [{"name": "vidtrain", "newName": IMAGE.rsplit(":", 1)[0], "newTag": IMAGE.rsplit(":", 1)[1]}],
        "patches": patches,
    }))
    result = subprocess.run([KUBECTL, "kustomize", str(overlay)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    for doc in documents:  # the env values a test changes (a shorter peer timeout)
        jobs = [doc] if doc["kind"] == "Job" else [r["template"] for r in doc["spec"]["replicatedJobs"]] \
            if doc["kind"] == "JobSet" else []
        for variable in (v for job in jobs for v in job["spec"]["template"]["spec"]["containers"][0].get("env", [])):
            if variable["name"] in (env or {}):
                variable["value"] = env[variable["name"]]
    return documents


def pods_of(job: dict) -> list[dict]:
    """The pods the Job controller creates from `job`'s template: one, or one per index of an
    Indexed Job, with the index label and annotation, JOB_COMPLETION_INDEX (from the annotation,
    as Kubernetes injects it) and the hostname <job>-<index>.

    One translation for podman 4.3: `kube play` publishes every containerPort on the host
    (Kubernetes does not), so two pods of one Job would collide there; the ports are dropped."""
    name = job["metadata"]["name"]
    indexed = job["spec"].get("completionMode") == "Indexed"
    pods = []
    for index in range(job["spec"].get("completions", 1) if indexed else 1):
        template = copy.deepcopy(job["spec"]["template"])
        meta, spec = template["metadata"], template["spec"]
        meta["labels"] = {**meta.get("labels", {}), "batch.kubernetes.io/job-name": name}
        meta["name"] = name
        if indexed:
            key = "batch.kubernetes.io/job-completion-index"
            meta["name"] = spec["hostname"] = f"{name}-{index}"
            meta["labels"][key] = str(index)
            meta["annotations"] = {**meta.get("annotations", {}), key: str(index)}
        for container in spec["containers"]:
            container.pop("ports", None)
            if indexed:
                container.setdefault("env", []).append(
                    {"name": "JOB_COMPLETION_INDEX",
                     "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{key}']"}}})
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
    return pods


def pods_of_jobset(jobset: dict) -> list[dict]:
    """The pods the JobSet and Job controllers create from `jobset` (each replicated job one Indexed
    Job): the child Job is <jobset>-<replicated job>-0; its pods get the Job's labels and annotations
    (pods_of) plus JobSet's, and the subdomain of the headless service JobSet makes, named like the
    JobSet. Their environment's values made from labels and $(NAME) references are resolved as the
    kubelet resolves them (podman 4.3 does neither)."""
    name = jobset["metadata"]["name"]
    pods = []
    for replicated in jobset["spec"]["replicatedJobs"]:
        job = {"metadata": {"name": f"{name}-{replicated['name']}-0"}, "spec": replicated["template"]["spec"]}
        for pod in pods_of(job):
            pod["metadata"]["labels"] |= {"jobset.sigs.k8s.io/jobset-name": name,
                                          "jobset.sigs.k8s.io/replicatedjob-name": replicated["name"],
                                          "jobset.sigs.k8s.io/job-index": "0"}
            pod["spec"]["subdomain"] = jobset["spec"].get("network", {}).get("subdomain", name)
            for container in pod["spec"]["containers"]:
                resolved = kubelet_env(pod["metadata"], container)
                container["env"] = [{"name": e["name"], "value": resolved[e["name"]]} if e["name"] in resolved else e
                                    for e in container["env"]]
            pods.append(pod)
    return pods


def find(documents: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in documents if d["kind"] == kind and name in (None, d["metadata"]["name"])]
