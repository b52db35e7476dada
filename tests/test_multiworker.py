"""Two worker processes on 127.0.0.1 with the environment an Indexed Job gives its pods."""

import json

import pytest
from jobs import ROOT, free_port, job_env, sample, scrape, wait_for

from loader import find_videos
from loader.demo import make_demo_dataset

pytestmark = pytest.mark.slow


def finish(procs, codes, timeout=300):
    """Wait for the worker processes (killing any left), check their exit codes; their logs."""
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == codes, "\n".join(o[-2000:] for o in outputs)
    return outputs


def test_two_workers_train_in_lockstep_on_disjoint_shards_and_share_the_evaluation(tmp_path):
    """The chief lists the data; worker 1 reads its index. Both train disjoint shards in lockstep, end
    with equal weights, and validate and evaluate half of the videos each (two clips per video): the
    gathered scores equal a single process's evaluation of the same model. A clip broken from the start
    is left out by the index's probe and replaced when loaded; the report names it once."""
    import subprocess
    import sys

    from jobs import job, settings

    cache, out = tmp_path / "cache", tmp_path / "out"  # the chief's output; worker 1's stays untouched
    make_demo_dataset(cache / "demo", 5, 2, 0)  # 25 train clips: shards of 13 and 12, one batch apart
    broken = sorted((cache / "demo" / "train" / "swipe_left").glob("*.mp4"))[1]
    broken.write_bytes(b"\0" * 4096)
    grpc_port = free_port()
    metrics_ports = [free_port(), free_port()]
    common = dict(num_workers=2, worker_port=grpc_port, output_dir=out, cache_dir=cache, epochs=3, frames=8,
                  height=32, width=32, batch_size=4, demo_clips_per_class=5, eval_clips=2)

    def start(index):
        env = job_env(metrics_port=metrics_ports[index], **common | ({"output_dir": tmp_path / "w1"} if index else {}))
        env["JOB_COMPLETION_INDEX"] = str(index)  # what Kubernetes sets in an Indexed Job's pods
        return subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    workers = [start(0), start(1)]
    try:
        for port in metrics_ports:  # every worker serves its own metrics while it trains
            assert wait_for(lambda port=port: (sample(scrape(port) or "", "vidtrain_batches_total", split="train")
                                               or 0) > 0,
                            timeout=180, interval=0.05), f"no training batches on worker metrics port {port}"
    except BaseException:
        for w in workers:
            w.kill()
        raise
    logs = finish(workers, [0, 0])
    assert "dataset index written" in logs[0] and "dataset index written" not in logs[1]
    assert "indexing" not in logs[1]  # worker 1 neither lists nor probes
    assert not (tmp_path / "w1").exists()  # nor reads or writes an output folder: the chief sent it the index

    records = [json.loads((out / "workers" / f"worker-{i}.json").read_text()) for i in range(2)]
    assert records[0]["trainable_sha256"] == records[1]["trainable_sha256"]
    assert records[0]["non_trainable_sha256"] == records[1]["non_trainable_sha256"]
    shards = [set(r["clips"]) for r in records]
    everything = {path for path, _ in find_videos(cache / "demo" / "train")[0]}
    assert not shards[0] & shards[1] and shards[0] | shards[1] == everything
    assert sorted(map(len, shards)) == [12, 13]

    for name in ("model.keras", "report.json", "history.json", "checkpoints/state.json", "saved_model/saved_model.pb",
                 "confusion_matrix.png", "tensorboard/train"):
        assert (out / name).exists(), name
    assert "checkpoint: " in logs[0] and "checkpoint: " not in logs[1]  # the chief alone writes them
    report = json.loads((out / "report.json").read_text())
    assert len(report["confusion_matrix"]) == 5 and report["epochs_completed"] == 3
    assert report["throughput"]["clips_trained"] == 3 * 25  # every clip once per epoch, across both workers
    assert [(s["path"], s["kind"]) for s in report["skipped"]] == [(str(broken), "unreadable")]
    assert {k: len(v) for k, v in json.loads((out / "history.json").read_text()).items()} == dict.fromkeys(
        ("loss", "accuracy", "learning_rate", "val_loss", "val_accuracy"), 3)
    shares = report["throughput"]["workers"]
    assert [w["worker"] for w in shares] == [0, 1] and all(w["train_clips"] > 0 and w["val_clips"] > 0 for w in shares)
    # 10 validation videos x 2 clips, 3 validations of one clip each and the final one of two: split in halves
    assert sum(w["val_clips"] for w in shares) == 3 * 10 + 2 * 10 and shares[0]["val_clips"] == shares[1]["val_clips"]

    single = {k: v for k, v in common.items() if k not in ("num_workers", "worker_port", "output_dir")}
    assert job(settings(None, out, mode="evaluate", **single))[0] == 0
    alone = json.loads((out / "evaluation.json").read_text())
    assert report["confusion_matrix"] == alone["confusion_matrix"] and report["per_class"] == alone["per_class"]
    for key, value in alone["final"].items():
        assert report["final"][key] == pytest.approx(value, rel=1e-5), key


def test_sigterm_to_one_worker_stops_both_at_the_same_step_and_both_resume(tmp_path):
    """Kubernetes may signal one pod (an eviction): the stop is agreed over all-reduce, so
    both stop at the same step (exit 143), the chief checkpoints, and a restart finishes with
    the history and weights of an uninterrupted run. Worker 1 has no output folder of its own: the
    clips that failed on it reach the chief's checkpoint, and the restart gets them back, with the
    checkpoint, from the chief."""
    import signal
    import subprocess
    import sys

    from conftest import lying_clip

    cache, out = tmp_path / "cache", tmp_path / "out"
    make_demo_dataset(cache / "demo", 5, 2, 0)  # shards 13 / 12 clips: 7 steps an epoch at batch 2
    for clip in sorted((cache / "demo" / "train").glob("*/*_00[23].mp4"))[:6]:  # decoding fails, the probe passes
        lying_clip(clip)
    grpc_port, ports = free_port(), [free_port(), free_port()]

    def start(output=out):
        procs = []
        for index in range(2):
            env = job_env(num_workers=2, worker_port=grpc_port, metrics_port=ports[index],
                          output_dir=output if index == 0 else tmp_path / "w1",
                          cache_dir=cache, epochs=6, frames=16, height=64, width=64, batch_size=2,
                          demo_clips_per_class=5)
            env["JOB_COMPLETION_INDEX"] = str(index)
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        return procs

    first = start()
    try:
        assert wait_for(lambda: (sample(scrape(ports[1]) or "", "vidtrain_batches_total", split="train")
                                 or 0) >= 9, timeout=180, interval=0.05), "workers did not reach epoch 2"
        first[1].send_signal(signal.SIGTERM)  # only worker 1
    except BaseException:
        for p in first:
            p.kill()
        raise
    finish(first, [143, 143], timeout=120)
    assert not (tmp_path / "w1").exists()
    failed = {w: list((out / "checkpoints").glob(f"failed-*-w{w}.json")) for w in (0, 1)}
    assert failed[0] and failed[1], failed  # the chief wrote what failed on each worker
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["epoch"] < 6 and (state["epoch"], state["step"]) != (0, 0)
    assert {len(v) for v in state["history"].values()} == {state["epoch"]}  # completed epochs only

    finish(start(), [0, 0])
    report = json.loads((out / "report.json").read_text())
    assert report["resumed_from"] == {k: state[k] for k in ("epoch", "step", "clips")}
    assert report["epochs_completed"] == 6
    # The position counts clips across workers: 7 steps of 2 clips on each worker (the shard of 12 pads
    # its 7th step), so after s steps 2s + min(2s, 12) clips; the rest of that epoch, then whole epochs.
    assert state["clips"] == 2 * state["step"] + min(2 * state["step"], 12)
    assert report["throughput"]["clips_trained"] == 25 * 6 - (25 * state["epoch"] + state["clips"])
    records = [json.loads((out / "workers" / f"worker-{i}.json").read_text()) for i in range(2)]
    assert records[0]["trainable_sha256"] == records[1]["trainable_sha256"]

    finish(start(tmp_path / "uninterrupted"), [0, 0])
    import keras
    import numpy as np

    resumed, whole = (json.loads((o / "history.json").read_text()) for o in (out, tmp_path / "uninterrupted"))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-5), key
    models = [keras.models.load_model(o / "model.keras") for o in (out, tmp_path / "uninterrupted")]
    for a, b in zip(models[0].weights, models[1].weights, strict=True):
        assert np.allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5), a.path


def test_a_killed_worker_ends_the_survivor_in_bounded_time_naming_it(tmp_path):
    """SIGKILL (no checkpoint, no goodbye): the survivor leaves with exit 1 (retried) within the
    peer timeout, with one line that names the lost worker and no traceback."""
    import signal
    import subprocess
    import sys
    import time

    cache, out = tmp_path / "cache", tmp_path / "out"
    make_demo_dataset(cache / "demo", 5, 2, 0)
    grpc_port, ports = free_port(), [free_port(), free_port()]
    procs = []
    for index in range(2):
        env = job_env(num_workers=2, worker_port=grpc_port, metrics_port=ports[index], output_dir=out,
                      cache_dir=cache, epochs=50, frames=8, height=32, width=32, batch_size=2,
                      demo_clips_per_class=5, peer_timeout_s=5)
        env["JOB_COMPLETION_INDEX"] = str(index)
        procs.append(subprocess.Popen([sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        assert wait_for(lambda: (sample(scrape(ports[0]) or "", "vidtrain_batches_total", split="train")
                                 or 0) >= 3, timeout=180, interval=0.05), "the workers did not train"
        procs[1].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        output = procs[0].communicate(timeout=60)[0]
        took = time.monotonic() - killed
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode == 1, output[-3000:]
    lost = [line for line in output.splitlines() if "lost a peer: worker 1 (127.0.0.1:" in line]
    assert len(lost) == 1 and " ERROR " in lost[0] and "Traceback" not in output, output[-3000:]
    assert took < 5 + 2 * 2 + 5  # the timeout, two polls, the exit


def _workers(tmp_path, envs, argv=None):
    """Start one entrypoint process per environment (dicts of VIDTRAIN_* settings and extra variables)."""
    import subprocess
    import sys

    procs = []
    for env in envs:
        procs.append(subprocess.Popen(argv or [sys.executable, str(ROOT / "entrypoint.py")], env=env, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    return procs


def test_a_tf_config_with_a_chief_task_has_one_chief_and_disjoint_shards(tmp_path):
    """The layout TFJob and Vertex AI set ({chief: [a], worker: [b]}): the chief is worker 0 and the
    worker worker 1; one of them writes the final outputs (both did), and their shards are disjoint."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    make_demo_dataset(cache / "demo", 3, 1, 0)
    grpc, metrics = [free_port(), free_port()], [free_port(), free_port()]
    cluster = {"chief": [f"127.0.0.1:{grpc[0]}"], "worker": [f"127.0.0.1:{grpc[1]}"]}
    envs = []
    for task, port in (("chief", metrics[0]), ("worker", metrics[1])):
        env = job_env(metrics_port=port, output_dir=out, cache_dir=cache, epochs=1, frames=4, height=32, width=32,
                      batch_size=2, demo_clips_per_class=3)
        env["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": {"type": task, "index": 0}})
        envs.append(env)
    logs = finish(_workers(tmp_path, envs), [0, 0])
    assert ["done: " in log for log in logs] == [True, False]
    shards = [set(json.loads((out / "workers" / f"worker-{i}.json").read_text())["clips"]) for i in range(2)]
    everything = {path for path, _ in find_videos(cache / "demo" / "train")[0]}
    assert not shards[0] & shards[1] and shards[0] | shards[1] == everything


def test_workers_with_different_settings_stop_before_training_naming_it(tmp_path):
    """Every worker confirms in one collective the same settings, index and resume position."""
    cache, out = tmp_path / "cache", tmp_path / "out"
    make_demo_dataset(cache / "demo", 3, 1, 0)
    grpc = free_port()
    envs = []
    for index, rate in ((0, 0.001), (1, 0.002)):  # a pod spec edited for one worker only
        env = job_env(num_workers=2, worker_port=grpc, metrics_port=free_port(), output_dir=out, cache_dir=cache,
                      epochs=1, frames=4, height=32, width=32, demo_clips_per_class=3, learning_rate=rate)
        env["JOB_COMPLETION_INDEX"] = str(index)
        envs.append(env)
    logs = finish(_workers(tmp_path, envs), [2, 2])
    assert all("the workers run with different settings" in log for log in logs)
    assert not (out / "checkpoints").exists()


def test_an_agreed_stop_ends_with_a_checkpoint_however_long_the_chief_writes_it(tmp_path):
    """SIGTERM to worker 1: it exits 143 at once while the chief writes the checkpoint on a slow volume
    (longer than PEER_TIMEOUT_S). The chief's watch has ended with the agreed stop: it exits 143 with
    the checkpoint written, not 1 for a peer it took for lost."""
    import signal
    import sys

    cache, out = tmp_path / "cache", tmp_path / "out"
    make_demo_dataset(cache / "demo", 5, 1, 0)  # 25 clips: 7 steps an epoch on each worker at batch 2
    grpc, metrics = free_port(), [free_port(), free_port()]
    slow_volume = ("import runpy, sys, time\n"
                   f"sys.path.insert(0, {str(ROOT)!r})\n"
                   "import vidtrain.checkpoint as c\n"
                   "save = c.Checkpointer.save\n"
                   "def slow(self, *args):\n"
                   "    time.sleep(8)  # the fault: a volume slower than the peers' timeout\n"
                   "    return save(self, *args)\n"
                   "c.Checkpointer.save = slow\n"
                   f"runpy.run_path({str(ROOT / 'entrypoint.py')!r}, run_name='__main__')\n")
    envs = []
    for index in range(2):
        env = job_env(num_workers=2, worker_port=grpc, metrics_port=metrics[index], output_dir=out, cache_dir=cache,
                      epochs=3, frames=4, height=32, width=32, batch_size=2, demo_clips_per_class=5,
                      peer_timeout_s=1)
        env["JOB_COMPLETION_INDEX"] = str(index)
        envs.append(env)
    procs = _workers(tmp_path, envs[:1], [sys.executable, "-c", slow_volume]) + _workers(tmp_path, envs[1:])
    try:
        assert wait_for(lambda: (sample(scrape(metrics[1]) or "", "vidtrain_batches_total", split="train")
                                 or 0) >= 3, timeout=180, interval=0.05), "the workers did not train"
        procs[1].send_signal(signal.SIGTERM)
    except BaseException:
        for p in procs:
            p.kill()
        raise
    logs = finish(procs, [143, 143], timeout=120)
    assert "lost a peer" not in logs[0]
    assert json.loads((out / "checkpoints" / "state.json").read_text())["epoch"] == 0
