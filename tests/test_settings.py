"""Configuration: every invalid setting stops the job with exit 2, naming its variable.

The table runs in-process through entrypoint.main (fast, precise); a few cases run the
real process for its exit code and stderr."""

import itertools
import json
import os

import pytest
from jobs import run_job

from vidtrain.settings import MODELS, Settings


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    base = tmp_path_factory.mktemp("cfg")
    (base / "data" / "train" / "a").mkdir(parents=True)
    (base / "m.csv").write_text("x.mp4;a\n")
    (base / "file").write_text("not a folder")
    return base


CASES = [  # (settings, variable named in the error, text expected in the message)
    ({"batch_size": "0"}, "VIDTRAIN_BATCH_SIZE", ">= 1"),
    ({"batch_size": "many"}, "VIDTRAIN_BATCH_SIZE", "valid integer"),
    ({"epochs": "-3"}, "VIDTRAIN_EPOCHS", ">= 1"),
    ({"frames": "0"}, "VIDTRAIN_FRAMES", ">= 1"),
    ({"height": "8"}, "VIDTRAIN_HEIGHT", ">= 16"),
    ({"width": "5000"}, "VIDTRAIN_WIDTH", "<= 1024"),
    ({"learning_rate": "0"}, "VIDTRAIN_LEARNING_RATE", "> 0"),
    ({"val_fraction": "1.5"}, "VIDTRAIN_VAL_FRACTION", "< 1"),
    ({"loader_workers": "0"}, "VIDTRAIN_LOADER_WORKERS", ">= 1"),
    ({"prefetch_batches": "0"}, "VIDTRAIN_PREFETCH_BATCHES", ">= 1"),
    ({"metrics_port": "70000"}, "VIDTRAIN_METRICS_PORT", "<= 65535"),
    ({"metrics_addr": "not-an-ip"}, "VIDTRAIN_METRICS_ADDR", "IPv4 or IPv6"),
    ({"model": "resnet"}, "VIDTRAIN_MODEL", "'conv3d', 'cnn_rnn', 'r2plus1d', 'tsn' or 'tsm'"),
    ({"mode": "serve"}, "VIDTRAIN_MODE", "'train', 'evaluate', 'predict' or 'prepare'"),
    ({"decode_device": "tpu"}, "VIDTRAIN_DECODE_DEVICE", "'cpu' or 'gpu'"),
    ({"on_bad_video": "ignore"}, "VIDTRAIN_ON_BAD_VIDEO", "'skip' or 'fail'"),
    ({"sampling": "dense"}, "VIDTRAIN_SAMPLING", "'uniform', 'random' or 'stride'"),
    ({"augment_flip": "sometimes"}, "VIDTRAIN_AUGMENT_FLIP", "valid boolean"),
    ({"data_dir": "/nonexistent/data"}, "VIDTRAIN_DATA_DIR", "does not point to a directory"),
    ({"data_dir": "{base}/file"}, "VIDTRAIN_DATA_DIR", "does not point to a directory"),
    ({"data_dir": "{base}"}, "VIDTRAIN_DATA_DIR", "no train/ folder"),
    ({"train_manifest": "/nonexistent.csv"}, "VIDTRAIN_TRAIN_MANIFEST", "does not point to a file"),
    ({"data_dir": "{base}/data", "train_manifest": "{base}/m.csv"}, "VIDTRAIN_DATA_DIR", "not both"),
    ({"val_manifest": "{base}/m.csv"}, "VIDTRAIN_VAL_MANIFEST", "needs TRAIN_MANIFEST"),
    ({"mode": "predict"}, "VIDTRAIN_PREDICT_INPUT", "predict mode needs"),
    ({"predict_input": "/nonexistent/clip.mp4"}, "VIDTRAIN_PREDICT_INPUT", "does not exist"),
    ({"output_dir": "{base}/file/out"}, "VIDTRAIN_OUTPUT_DIR", "cannot be created"),
    ({"pushgateway_url": "ftp://user:hunter2@gw"}, "VIDTRAIN_PUSHGATEWAY_URL", "http(s) URL"),
    ({"epocs": "3"}, "VIDTRAIN_EPOCS", "did you mean VIDTRAIN_EPOCHS?"),
    ({"frame_template": "img.jpg"}, "VIDTRAIN_FRAME_TEMPLATE", "exactly one number field"),
    ({"lr_schedule": "step"}, "VIDTRAIN_LR_SCHEDULE", "'constant' or 'cosine'"),
    ({"label_smoothing": "1"}, "VIDTRAIN_LABEL_SMOOTHING", "< 1"),
    ({"warmup_epochs": "20", "epochs": "10"}, "VIDTRAIN_WARMUP_EPOCHS", "20 warm-up epochs of 10"),
    ({"index_check": "full"}, "VIDTRAIN_INDEX_CHECK", "'header' or 'decode'"),
    ({"model": "tsn", "backbone": "vgg16"}, "VIDTRAIN_BACKBONE", "'mobilenet_v3_small'"),
    ({"backbone_weights": "imagenet"}, "VIDTRAIN_BACKBONE_WEIGHTS", "applies to MODEL=tsn or tsm, not conv3d"),
    ({"model": "tsm", "backbone_weights": "/nonexistent.h5"}, "VIDTRAIN_BACKBONE_WEIGHTS", "neither imagenet nor a"),
    ({"model": "tsm", "height": "16"}, "VIDTRAIN_HEIGHT", "need HEIGHT and WIDTH >= 32"),
    ({"mixed_precision": "fp8"}, "VIDTRAIN_MIXED_PRECISION", "'off', 'bf16' or 'fp16'"),
    ({"resize": "stretch"}, "VIDTRAIN_RESIZE", "'squash' or 'short_side'"),
    ({"eval_crops": "3"}, "VIDTRAIN_EVAL_CROPS", "need VIDTRAIN_RESIZE=short_side"),
    ({"eval_crops": "2", "resize": "short_side"}, "VIDTRAIN_EVAL_CROPS", "1 or 3 crops"),
    ({"rnn_cell": "transformer"}, "VIDTRAIN_RNN_CELL", "'gru' or 'lstm'"),
]


@pytest.fixture
def main(monkeypatch, capsys):
    """entrypoint.main in this process with exactly `settings` as VIDTRAIN_*; returns (code, stderr)."""
    import entrypoint

    def call(argv=(), **settings):
        for name in list(os.environ):
            if name.startswith("VIDTRAIN_") or name in ("TF_CONFIG", "JOB_COMPLETION_INDEX"):
                monkeypatch.delenv(name)
        for name, value in settings.items():
            monkeypatch.setenv(f"VIDTRAIN_{name.upper()}", value)
        code = entrypoint.main(list(argv))
        captured = capsys.readouterr()
        return code, captured.err + captured.out

    return call


@pytest.mark.parametrize("settings, variable, text", CASES, ids=[c[1] + ":" + c[2] for c in CASES])
def test_invalid_setting_exits_2_naming_the_variable(paths, main, settings, variable, text):
    code, output = main(**{k: v.format(base=paths) for k, v in settings.items()})
    assert code == 2, output
    problem_lines = [ln for ln in output.splitlines() if ln.strip().startswith(variable)]
    assert problem_lines and any(text in ln for ln in problem_lines), output
    assert "hunter2" not in output


@pytest.mark.parametrize("settings, variable", [({"batch_size": "0"}, "VIDTRAIN_BATCH_SIZE"),
                                                ({"epocs": "3"}, "VIDTRAIN_EPOCS")])
def test_the_process_exits_2_with_the_problem_on_stderr_and_no_traceback(settings, variable):
    result = run_job(timeout=60, **settings)
    assert result.returncode == 2 and variable in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_several_problems_one_line_each(main):
    code, output = main(batch_size="0", frames="0", model="x")
    lines = [ln.strip() for ln in output.splitlines() if ln.strip().startswith("VIDTRAIN_")]
    assert code == 2
    assert [ln.split("=")[0] for ln in lines] == ["VIDTRAIN_MODEL", "VIDTRAIN_BATCH_SIZE", "VIDTRAIN_FRAMES"]


def test_cli_flags_are_validated_too_and_win_over_env(main):
    code, output = main(["--batch-size", "0"], batch_size="4")
    assert code == 2 and "VIDTRAIN_BATCH_SIZE='0'" in output


def test_help_names_every_variable_with_its_flag_type_and_default():
    from vidtrain.settings import default_text, plain_type, variable

    result = run_job(["--help"], timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    text = result.stdout
    for name, info in Settings.model_fields.items():
        # A field read from a variable of Kubernetes' or TensorFlow's takes its flag from that name.
        flag = "--" + (info.validation_alias.choices[0] if info.validation_alias else name).lower().replace("_", "-")
        lines = text.splitlines()
        at = next(k for k, line in enumerate(lines) if line.strip().startswith(variable(name) + " "))
        shown = f"({flag}, --no-{flag[2:]})" if plain_type(name) == "true|false" else f"({flag} {plain_type(name)})"
        assert shown in lines[at], lines[at]  # a switch takes no value
        block = " ".join(line.strip() for line in itertools.takewhile(lambda ln: ln.startswith("      "),
                                                                       lines[at + 1:]))  # the description under it
        assert "(default: " in block and (f"(default: {default_text(name)})" in block
                                          or "(default:" in info.description), block
    assert "{Path,null}" not in text and "VIDTRAIN_BATCH_SIZE  (--batch-size INTEGER)" in text
    assert "(default: 8)" in text and "train|evaluate|predict|prepare" in text


def test_every_setting_has_a_description_and_models_match_the_registry():
    import models

    assert all(f.description for f in Settings.model_fields.values())
    assert tuple(models.REGISTRY) == MODELS


def test_secrets_are_redacted(monkeypatch, tmp_path):
    from vidtrain.settings import load

    monkeypatch.setenv("VIDTRAIN_PUSHGATEWAY_URL", "http://user:hunter2@127.0.0.1:9091")
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    settings = load([])
    assert "hunter2" not in str(settings.redacted()) and "hunter2" not in repr(settings)
    assert settings.pushgateway_url.get_secret_value().endswith("@127.0.0.1:9091")


def test_only_the_settings_module_reads_the_environment():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent
    readers = [p.relative_to(root).as_posix() for folder in ("loader", "models", "vidtrain")
               for p in (root / folder).rglob("*.py") if re.search(r"os\.environ|os\.getenv", p.read_text())]
    assert readers == ["vidtrain/settings.py"]


def test_tf_config_from_a_training_operator_is_used_as_given(monkeypatch, tmp_path):
    from vidtrain.settings import load

    config = '{"cluster": {"worker": ["w0:2222", "w1:2222", "w2:2222"]}, "task": {"type": "worker", "index": 2}}'
    monkeypatch.setenv("TF_CONFIG", config)
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    settings = load([])
    assert settings.distributed and settings.cluster()["task"] == {"type": "worker", "index": 2}
    assert settings.cluster()["cluster"]["worker"] == ["w0:2222", "w1:2222", "w2:2222"]
    assert settings.ranks() == (2, ["w0:2222", "w1:2222", "w2:2222"])


@pytest.mark.parametrize("task, rank", [("chief", 0), ("worker", None)])
def test_a_tf_config_with_a_chief_ranks_the_chief_first(monkeypatch, tmp_path, task, rank):
    """TFJob's and Vertex AI's layout: one chief task and the workers; the chief is rank 0, the workers
    follow in order (two chiefs were the outcome before: both wrote the final outputs)."""
    from vidtrain.settings import load

    cluster = {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"]}
    index = 0 if task == "chief" else 1
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task, "index": index}}))
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    assert load([]).ranks() == (0 if task == "chief" else 2, ["c:2222", "w0:2222", "w1:2222"])


@pytest.mark.parametrize("config, problem", [
    ({"cluster": {"chief": ["c:1"], "ps": ["p:1"]}, "task": {"type": "chief", "index": 0}}, "type ps are not"),
    ({"cluster": {"chief": ["c:1", "d:1"]}, "task": {"type": "chief", "index": 0}}, "one chief at most"),
    ({"cluster": {"worker": ["w:1"]}, "task": {"type": "worker", "index": 3}}, "task 'worker' 3 is not in"),
    ({"cluster": {"worker": ["w"]}, "task": {"type": "worker", "index": 0}}, "a list of host:port"),
    (["not", "a", "dict"], "must be {"),
])
def test_a_tf_config_that_cannot_work_stops_at_start_naming_it(monkeypatch, tmp_path, config, problem):
    from vidtrain.settings import ConfigError, load

    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as error:
        load([])
    lines = error.value.lines
    assert any(line.startswith("TF_CONFIG or VIDTRAIN_TF_CONFIG: ") and problem in line for line in lines), lines


def test_worker_cluster_built_locally_without_a_service(monkeypatch, tmp_path):
    from vidtrain.settings import load

    monkeypatch.setenv("JOB_COMPLETION_INDEX", "0")
    monkeypatch.setenv("VIDTRAIN_NUM_WORKERS", "3")
    monkeypatch.setenv("VIDTRAIN_WORKER_PORT", "3000")
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    assert load([]).cluster()["cluster"]["worker"] == ["127.0.0.1:3000", "127.0.0.1:3001", "127.0.0.1:3002"]


def test_pure_stages_and_models_import_nothing_they_should_not():
    """loader's index, sampling, decode and prefetch load without TensorFlow or Keras; models/ and
    loader/ import nothing of vidtrain/ (a fresh interpreter shows what an import pulls in)."""
    import subprocess
    import sys

    from jobs import ROOT

    code = ("import sys, loader.sampling, loader.index, loader.decode, loader.prefetch, loader.hooks, loader\n"
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'tf_keras'})\n"
            "import models, models.conv3d, models.cnn_rnn, loader.sequence\n"
            "print(heavy, sorted(m for m in sys.modules if m.startswith('vidtrain')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[] []"


def test_an_empty_variable_means_unset_not_the_current_folder(monkeypatch, tmp_path):
    from vidtrain.settings import load

    monkeypatch.setenv("VIDTRAIN_DATA_DIR", "")
    monkeypatch.setenv("VIDTRAIN_OUTPUT_DIR", str(tmp_path))
    assert load([]).data_dir is None


def test_a_lower_case_name_is_reported_not_read(main, monkeypatch):
    monkeypatch.setenv("vidtrain_epochs", "3")
    code, output = main()
    assert code == 2
    assert "vidtrain_epochs: unknown setting (names are upper case); did you mean VIDTRAIN_EPOCHS?" in output


def test_a_misspelt_name_gets_the_nearest_one_and_every_other_problem_is_still_reported(main):
    code, output = main(epocs="3", batch_size="0", frames="x")
    lines = [ln.strip() for ln in output.splitlines()[1:]]
    assert code == 2 and output.startswith("vidtrain: invalid configuration:")
    assert "VIDTRAIN_EPOCS: unknown setting; did you mean VIDTRAIN_EPOCHS?" in lines
    assert [ln.split("=")[0] for ln in lines[1:]] == ["VIDTRAIN_BATCH_SIZE", "VIDTRAIN_FRAMES"]


def test_every_flag_help_shows_parses(tmp_path):
    """Each setting through the flag --help prints for it (a switch alone; others with a valid value)."""
    from vidtrain.settings import GROUPS, flag_text, load

    (tmp_path / "train").mkdir()
    values = {"FOLDER": str(tmp_path), "FILE": __file__, "PATH": str(tmp_path / "p"), "INTEGER": "1", "NUMBER": "1",
              "TEXT": "x", "URL": "http://gw:9091", "ADDRESS": "127.0.0.1", "JSON": "null"}
    special = {"worker_index": "0", "frame_template": "img_{:05d}.jpg", "backbone_weights": "imagenet",
               "eval_crops": None, "video_root": None, "val_manifest": None, "predict_input": __file__,
               "train_manifest": str(tmp_path / "m.csv")}
    (tmp_path / "m.csv").write_text("a.mp4;x\n")
    for field in (f for fields in GROUPS.values() for f in fields):
        flag, *kind = flag_text(field).split(" ")
        if flag.endswith(","):  # a switch: --x, --no-x
            argv = [flag[:-1]]
        elif field in special and special[field] is None:
            continue  # needs another setting with it; parsed in the cases above
        else:
            default = Settings.model_fields[field].default
            value = special.get(field) or (kind[0].split("|")[0] if "|" in kind[0] else
                                           str(default) if kind[0] in ("INTEGER", "NUMBER") else values[kind[0]])
            argv = [flag, value]
        extra = ["--model", "tsn"] if field in ("backbone", "backbone_weights", "freeze_backbone_epochs") else []
        extra += ["--height", "32", "--width", "32"] if extra else []
        settings = load(argv + extra + ["--output-dir", str(tmp_path / "out")])
        assert field in settings.model_fields_set, argv


def test_every_problem_of_a_run_is_reported_at_once_those_across_settings_too(main, paths):
    code, output = main(epochs="0", val_manifest=f"{paths}/m.csv")
    assert code == 2
    lines = [line.strip() for line in output.splitlines()]
    assert any(line.startswith("VIDTRAIN_EPOCHS='0'") for line in lines)
    assert "VIDTRAIN_VAL_MANIFEST: VAL_MANIFEST needs TRAIN_MANIFEST" in lines
