"""Settings: the only place that reads the environment.

Every setting is an environment variable `VIDTRAIN_<NAME>` (upper case, as
written) and a CLI flag `--<name>` (CLI wins), with a typed default and a
one-line description. `load()` returns one frozen `Settings` or raises
`ConfigError`, whose lines each name the variable, the bad value and what is
allowed (a misspelt name gets "did you mean ...?"), every problem of the run at
once. `help_text()` is what `--help` prints. This module imports nothing heavy,
so a bad setting fails in well under a second.
"""

from __future__ import annotations

import difflib
import json
import os
import socket
import textwrap
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import (
    AliasChoices,
    AnyHttpUrl,
    Field,
    FilePath,
    IPvAnyAddress,
    Json,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from models import BACKBONE_MIN_SIZE, BACKBONE_MODELS, BACKBONES, IMAGENET_FILES, REGISTRY

PREFIX = "VIDTRAIN_"
# The kind of path a setting names, for --help and the settings table (the job checks it exists: `missing_data`).
FOLDER, FILE = {"json_schema_extra": {"kind": "FOLDER"}}, {"json_schema_extra": {"kind": "FILE"}}
MODELS = tuple(REGISTRY)  # the model registry decides which names exist


class Settings(BaseSettings):
    """One job's configuration, validated and frozen."""

    model_config = SettingsConfigDict(
        env_prefix=PREFIX, frozen=True, extra="forbid", cli_kebab_case=True, cli_prog_name="vidtrain",
        cli_implicit_flags=True, env_ignore_empty=True,  # VIDTRAIN_DATA_DIR= means unset, not "."
    )  # pydantic-settings matches names in any case: load() refuses all but the upper-case spelling

    # -- data ------------------------------------------------------------------------
    data_dir: Path | None = Field(None, description="folder with train/ (and val/) class folders", **FOLDER)
    train_manifest: Path | None = Field(None, description="training clips: a 'path;label[;index]' CSV or a "
                                        "dataset's own list (UCF101/HMDB51, SSv2, Kinetics, Jester, MMAction2)", **FILE)
    val_manifest: Path | None = Field(None, description="validation clips, same formats (needs TRAIN_MANIFEST)",
                                      **FILE)
    video_root: Path | None = Field(None, description="where the manifests' clips live (default: beside the "
                                    "manifest)", **FOLDER)
    data_wait_s: float = Field(0, ge=0, le=30 * 86400, description="wait up to this long for the data (DATA_DIR's "
                               "train/, the manifests, VIDEO_ROOT) to appear, then exit 1 (retried); 0: missing "
                               "data is an invalid configuration (exit 2)")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share held out for validation when no val split")
    cache_dir: Path = Field(Path(".cache"), description="the demo dataset and the frame cache (frames/)")
    frame_cache_gb: float = Field(10, ge=0, le=100000, description="bound of the decoded-frame cache; 0 turns it off")
    demo_clips_per_class: int = Field(40, ge=2, le=1000, description="training clips per class of the demo set")
    frame_template: str | None = Field(None, description="file names of a frame folder's RGB frames, e.g. "
                                       "img_{:05d}.jpg (default: img_* files if any, else every image)")
    index_workers: int = Field(16, ge=1, le=256, description="threads that probe clips for the dataset index "
                               "(sized for storage latency, not cores)")
    index_check: Literal["header", "decode"] = Field("header", description="what indexing reads of a clip: its "
                                                     "header, or also its last frame decoded")
    reindex: bool = Field(False, description="list and probe every clip again: a new dataset index")
    # -- job -------------------------------------------------------------------------
    mode: Literal["train", "evaluate", "predict", "prepare"] = Field("train", description="what the job does "
                                                                     "(prepare: a training copy of the clips)")
    output_dir: Path = Field(Path("output"), description="model, checkpoints, reports")
    predict_input: Path | None = Field(None, description="predict mode: a clip, a folder of clips, or a CSV")
    prepare_dir: Path | None = Field(None, description="prepare mode: where the training copy of every listed clip "
                                     "and its train.csv and val.csv go")
    prepare_short_side: int = Field(256, ge=32, le=4096, description="prepare mode: the copy's short side in pixels "
                                    "(never enlarged; 256 leaves room for crops up to 224)")
    model: Literal[MODELS] = Field("conv3d", description="model architecture")
    rnn_cell: Literal["gru", "lstm"] = Field("gru", description="recurrent cell of cnn_rnn")
    backbone: Literal[tuple(BACKBONES)] = Field("mobilenet_v3_small", description="tsn and tsm: the per-frame "
                                               "keras.applications backbone")
    backbone_weights: str | None = Field(None, description="tsn and tsm: imagenet (Keras downloads the backbone's "
                                         "file into $KERAS_HOME/models, or finds it placed there: " + ", ".join(
                                             f"{name}: {file}" for name, file in IMAGENET_FILES.items())
                                         + "), or a local weights file of the backbone (default: none, random "
                                         "weights)")
    freeze_backbone_epochs: int = Field(0, ge=0, le=10000, description="tsn and tsm: train only the head for this "
                                        "many epochs, then everything")
    pretrained_weights: FilePath | None = Field(None, description="a vidtrain model.keras to start from (trained on "
                                                "any classes: a head for other classes starts afresh)")
    mixed_precision: Literal["off", "bf16", "fp16"] = Field("off", description="compute in bfloat16 (CPUs with "
                                                            "AVX512-BF16 or AMX, GPUs) or float16 (GPUs only)")
    epochs: int = Field(20, ge=1, le=10000, description="total training epochs (a resumed job counts on)")
    batch_size: int = Field(8, ge=1, le=1024, description="clips per batch")
    frames: int = Field(16, ge=1, le=512, description="frames sampled per clip")
    height: int = Field(64, ge=16, le=1024, description="frame height after resize")
    width: int = Field(64, ge=16, le=1024, description="frame width after resize")
    learning_rate: float = Field(1e-3, gt=0, le=1, description="peak learning rate (AdamW)")
    # The recipe's defaults (and EPOCHS) were chosen by `make bench-learn` on two benchmark sets made differently
    # (BENCHMARKS.md section 5): the best mean final accuracy over five seeds on the worse of the two.
    lr_schedule: Literal["constant", "cosine"] = Field("cosine", description="the rate after warm-up: constant, "
                                                      "or a cosine decay to 0 at the last epoch")
    warmup_epochs: float = Field(1, ge=0, le=1000, description="epochs of linear warm-up from a tenth of the rate")
    weight_decay: float = Field(0.05, ge=0, le=1, description="AdamW's decoupled weight decay (0: plain Adam)")
    label_smoothing: float = Field(0.1, ge=0, lt=1, description="share of each target spread over all classes")
    grad_clip_norm: float = Field(0, ge=0, le=1000, description="clip gradients to this global norm (0: off)")
    seed: int = Field(0, ge=0, description="seed for data order, sampling, augmentation and weights")
    sampling: Literal["uniform", "random", "stride"] = Field("random", description="training frame sampling")
    augment_flip: bool = Field(False, description="horizontal flips that swap left/right labels")
    augment_crop: bool = Field(False, description="random resized crop, the same for every frame of a clip")
    eval_clips: int = Field(1, ge=1, le=32, description="final evaluation: clips per video, softmax averaged")
    final_model: Literal["last", "best"] = Field("last", description="the model written (model.keras, "
                                                 "saved_model/) and finally evaluated: the last epoch's, or the "
                                                 "weights of the epoch with the best validation accuracy (the first "
                                                 "such)")
    resize: Literal["squash", "short_side"] = Field("squash", description="frames to HEIGHT x WIDTH: squashed "
                                                    "whatever their aspect, or resized keeping it and cropped (at "
                                                    "random in training, centred in evaluation)")
    eval_crops: int = Field(1, ge=1, le=3, description="final evaluation: crops per clip, 1 or 3 (along the long "
                            "side, RESIZE=short_side), softmax averaged")
    # -- loader ----------------------------------------------------------------------
    loader_workers: int = Field(2, ge=1, le=64, description="decode threads")
    prefetch_batches: int = Field(4, ge=1, le=256, description="batches decoded ahead (memory bound)")
    decode_device: Literal["cpu", "gpu"] = Field("cpu", description="decord decode device")
    on_bad_video: Literal["skip", "fail"] = Field("skip", description="skip and report, or stop with exit 3")
    checkpoint_every_s: float = Field(1800, ge=0, le=10**7, description="also checkpoint mid-epoch after this "
                                      "many seconds (0: at epoch ends only)")
    decode_timeout_s: float = Field(60, gt=0, le=86400, description="a clip whose decode takes longer is skipped")
    # -- metrics ---------------------------------------------------------------------
    metrics_port: int = Field(8000, ge=0, le=65535, description="Prometheus /metrics port (0: any free port, "
                              "logged)")
    metrics_addr: IPvAnyAddress = Field(IPv4Address("0.0.0.0"), description="metrics bind address")
    pushgateway_url: SecretStr | None = Field(None, description="Pushgateway for the final outcome (may hold secrets)")
    # -- multi-worker (tf.distribute.MultiWorkerMirroredStrategy) ----------------------
    num_workers: int = Field(1, ge=1, le=256, description="training processes; > 1 trains multi-worker (with "
                             "CHIEF_JOB: the workers besides the chief)")
    worker_index: int = Field(0, ge=0, description="this worker's index (Kubernetes sets JOB_COMPLETION_INDEX)",
                              validation_alias=AliasChoices("JOB_COMPLETION_INDEX", "VIDTRAIN_WORKER_INDEX"))
    worker_service: str | None = Field(None, description="headless service of the workers (none: 127.0.0.1)")
    job_name: str = Field("vidtrain", description="Kubernetes Job name: pod hostnames are <job>-<index>")
    worker_port: int = Field(2222, ge=1, le=65535, description="gRPC port (locally: port + index)")
    chief_job: str | None = Field(None, description="a chief in a Job of its own (k8s/jobset/): that Job's name; "
                                  "the pod whose host name is <CHIEF_JOB>-0 is the chief, JOB_NAME's pods the workers")
    peer_timeout_s: float = Field(60, ge=1, le=86400, description="a peer worker unreachable this long is lost: "
                                  "the others stop with exit 1 (retried)")
    tf_config: Json | None = Field(None, description="TF_CONFIG as a training operator sets it; wins if set",
                                   validation_alias=AliasChoices("TF_CONFIG", "VIDTRAIN_TF_CONFIG"))

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        problems = []
        if self.frame_template is not None:
            from loader.paths import template_pattern

            try:
                template_pattern(self.frame_template)
            except ValueError as exc:
                problems.append(("frame_template", str(exc)))
        if self.data_dir and (self.train_manifest or self.val_manifest):
            problems.append(("data_dir", "set either DATA_DIR or TRAIN_MANIFEST/VAL_MANIFEST, not both"))
        if self.val_manifest and not self.train_manifest:
            problems.append(("val_manifest", "VAL_MANIFEST needs TRAIN_MANIFEST"))
        if self.video_root and not self.train_manifest:
            problems.append(("video_root", "VIDEO_ROOT is where TRAIN_MANIFEST's clips live: set TRAIN_MANIFEST"))
        if self.data_wait_s == 0:  # else the job waits for what is missing (vidtrain.job)
            problems += self.missing_data()
        if self.model == "cnn_rnn" and self.frames < 2:
            problems.append(("frames", f"cnn_rnn reads frame differences: needs FRAMES >= 2, got {self.frames}"))
        if self.tf_config is not None and (problem := _tf_config_problem(self.tf_config)):
            problems.append(("tf_config", problem))
        if self.worker_index >= self.num_workers and self.tf_config is None:
            problems.append(("worker_index", f"index {self.worker_index} is not below NUM_WORKERS={self.num_workers}"))
        backbone_set = {"backbone", "backbone_weights", "freeze_backbone_epochs"} & self.model_fields_set
        if backbone_set and self.model not in BACKBONE_MODELS:
            problems.append((sorted(backbone_set)[0], f"applies to MODEL=tsn or tsm, not {self.model}"))
        if self.backbone_weights not in (None, "imagenet") and not os.path.isfile(self.backbone_weights):
            problems.append(("backbone_weights", f"{self.backbone_weights} is neither imagenet nor a file"))
        if self.model in BACKBONE_MODELS and min(self.height, self.width) < BACKBONE_MIN_SIZE:
            problems.append(("height", f"tsn and tsm's backbones need HEIGHT and WIDTH >= {BACKBONE_MIN_SIZE}, got "
                                       f"{self.height}x{self.width}"))
        if self.eval_crops == 2:
            problems.append(("eval_crops", "1 or 3 crops (the centre; or the start, centre and end of the long side)"))
        elif self.eval_crops == 3 and self.resize != "short_side":
            problems.append(("eval_crops", "three crops along the long side need VIDTRAIN_RESIZE=short_side"))
        if self.warmup_epochs > self.epochs:
            problems.append(("warmup_epochs", f"{self.warmup_epochs:g} warm-up epochs of {self.epochs} in all"))
        if self.mode == "predict" and self.predict_input is None:
            problems.append(("predict_input", "predict mode needs PREDICT_INPUT (a clip, folder or CSV)"))
        if self.mode == "prepare" and self.prepare_dir is None:
            problems.append(("prepare_dir", "prepare mode needs PREPARE_DIR (where the copy goes)"))
        if self.prepare_dir is not None and (problem := _writable(self.prepare_dir)):
            problems.append(("prepare_dir", problem))
        if self.predict_input is not None and not self.predict_input.exists():
            problems.append(("predict_input", f"{self.predict_input} does not exist"))
        if self.pushgateway_url is not None:
            try:
                AnyHttpUrl(self.pushgateway_url.get_secret_value())
            except ValueError:
                problems.append(("pushgateway_url", "must be an http(s) URL"))
        if self.pretrained_weights is not None and not os.access(self.pretrained_weights, os.R_OK):
            problems.append(("pretrained_weights", f"{self.pretrained_weights} is not readable"))
        if self.mode != "prepare" and self.writes_outputs and (problem := _writable(self.output_dir)):
            problems.append(("output_dir", problem))  # prepare writes to PREPARE_DIR; a worker but the chief, nowhere
        if problems:
            raise ValueError("\n".join(f"{variable(field)}: {text}" for field, text in problems))
        return self

    def missing_data(self) -> list[tuple[str, str]]:
        """(setting, what is wrong) for every data path that is not there (yet), or cannot be read."""
        problems = []
        for field, kind in (("data_dir", "dir"), ("train_manifest", "file"), ("val_manifest", "file"),
                            ("video_root", "dir")):
            path = getattr(self, field)
            if path is None:
                continue
            if not (path.is_dir() if kind == "dir" else path.is_file()):
                problems.append((field, f"{path} does not point to a {'directory' if kind == 'dir' else 'file'}"))
            elif not os.access(path, os.R_OK):
                problems.append((field, f"{path} is not readable"))
            elif field == "data_dir" and not (path / "train").is_dir():
                problems.append((field, f"{path} has no train/ folder of class folders"))
        return problems

    @property
    def distributed(self) -> bool:
        return self.num_workers > 1 or self.tf_config is not None or self.chief_job is not None

    @property
    def writes_outputs(self) -> bool:
        """Whether this process reads and writes OUTPUT_DIR: one worker, or the chief of several (the others
        get what they need from the chief over their own connection)."""
        try:
            return not self.distributed or self.ranks()[0] == 0
        except (KeyError, TypeError, AttributeError):  # a malformed TF_CONFIG: reported on its own
            return True

    def cluster(self) -> dict:
        """TF_CONFIG for this worker: as given by a training operator, or built from the worker
        count, index and service (`<job>-<i>.<service>:<port>`; locally 127.0.0.1:<port + i>)."""
        if self.tf_config is not None:
            return self.tf_config
        if self.chief_job is not None:  # TF_CONFIG's layout: a chief, then NUM_WORKERS workers
            domain = f".{self.worker_service}" if self.worker_service else ""
            chief = f"{self.chief_job}-0"
            hosts = [f"{self.job_name}-{i}{domain}:{self.worker_port}" for i in range(self.num_workers)]
            task = {"type": "chief", "index": 0} if socket.gethostname() == chief else \
                {"type": "worker", "index": self.worker_index}
            return {"cluster": {"chief": [f"{chief}{domain}:{self.worker_port}"], "worker": hosts}, "task": task}
        if self.worker_service:
            hosts = [f"{self.job_name}-{i}.{self.worker_service}:{self.worker_port}" for i in range(self.num_workers)]
        else:
            hosts = [f"127.0.0.1:{self.worker_port + i}" for i in range(self.num_workers)]
        return {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": self.worker_index}}

    def ranks(self) -> tuple[int, list[str]]:
        """(this worker's rank, every worker's host:port by rank). Rank 0 is the chief, which writes
        the outputs: TF_CONFIG's `chief` task where it has one (the layout TFJob and Vertex AI set),
        then its `worker` tasks in order; without TF_CONFIG, worker i is rank i."""
        config = self.cluster()
        chief, workers = config["cluster"].get("chief", []), config["cluster"].get("worker", [])
        task = config["task"]
        return (0 if task["type"] == "chief" else len(chief) + task["index"]), chief + workers

    def redacted(self) -> dict:
        """All settings as JSON-ready values, secrets replaced by '**********'."""
        return {k: ("**********" if isinstance(v, SecretStr) else _plain(v)) for k, v in self}


def _tf_config_problem(config) -> str | None:
    """What makes a TF_CONFIG unusable here, or None: training runs as one chief (at most) and workers,
    all in the collective; parameter servers and evaluators are not part of it."""
    if not isinstance(config, dict) or not isinstance(config.get("cluster"), dict) or \
            not isinstance(config.get("task"), dict):
        return "must be {\"cluster\": {...}, \"task\": {\"type\": ..., \"index\": ...}}"
    cluster, task = config["cluster"], config["task"]
    if other := sorted(set(cluster) - {"chief", "worker"}):
        return f"tasks of type {', '.join(other)} are not supported (only chief and worker)"
    if not all(isinstance(v, list) and all(isinstance(a, str) and ":" in a for a in v) for v in cluster.values()):
        return "every cluster entry must be a list of host:port addresses"
    if len(cluster.get("chief", [])) > 1:
        return f"one chief at most, got {len(cluster['chief'])}"
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster or not isinstance(index, int) or not 0 <= index < len(cluster[kind]):
        return f"task {kind!r} {index!r} is not in the cluster {json.dumps(cluster)}"
    return None


def _plain(value):
    return str(value) if isinstance(value, (Path, IPv4Address, IPv6Address)) else value


def _writable(folder: Path) -> str | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"{folder} cannot be created ({exc.strerror})"
    return None if os.access(folder, os.W_OK | os.X_OK) else f"{folder} is not writable"


def env_name(field: str) -> str:
    return PREFIX + field.upper()


class ConfigProblem(RuntimeError):
    """A setting that validated but cannot work with this data, model or machine (exit code 2)."""


class ConfigError(ValueError):
    """Invalid configuration: `lines` holds one message per problem."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def load(argv: list[str] | None = None) -> Settings:
    """Settings from the environment and `argv` (CLI flags win). Raises ConfigError listing every
    problem: unknown variables (with the nearest name), invalid values, and what the settings that
    are valid rule out together (checked with the invalid ones at their defaults)."""
    argv = argv if argv is not None else []
    known = {env_name(name) for name in Settings.model_fields}
    problems = [_unknown(k, known) for k in sorted(os.environ) if k.upper().startswith(PREFIX) and k not in known]
    try:
        settings = Settings(_cli_parse_args=argv, _cli_exit_on_error=True)
    except ValidationError as exc:
        problems += [line for err in exc.errors() for line in _describe(err)]
        failing = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
        if failing:
            problems += _cross_problems(argv, failing)
    except SettingsError as exc:
        problems.append(str(exc))
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_problems(argv: list[str], failing: set[str]) -> list[str]:
    """The problems across settings (the model's own checks) with the `failing` settings at their defaults
    (given values win over the environment, as flags do)."""
    from pydantic_settings import CliSettingsSource

    given = {k: v for k, v in CliSettingsSource(Settings, cli_parse_args=argv)().items() if k not in failing}
    defaults = {name: Settings.model_fields[name].default for name in failing if name in Settings.model_fields}
    try:
        Settings(_cli_parse_args=[], **given, **defaults)
    except ValidationError as exc:
        return [line for err in exc.errors() if not err["loc"] for line in _describe(err)]
    except SettingsError:
        pass
    return []


def _unknown(name: str, known: set[str]) -> str:
    near = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
    hint = f"did you mean {near[0]}?" if near else "see --help for the settings"
    case = " (names are upper case)" if name.upper() in known else ""
    return f"{name}: unknown setting{case}; {hint}"


# The settings in --help and the README's table, group by group.
GROUPS = {
    "data": ("data_dir", "train_manifest", "val_manifest", "video_root", "val_fraction", "frame_template",
             "cache_dir", "frame_cache_gb", "demo_clips_per_class", "index_workers", "index_check", "reindex",
             "data_wait_s"),
    "job": ("mode", "output_dir", "predict_input", "prepare_dir", "prepare_short_side", "epochs", "seed",
            "checkpoint_every_s"),
    "model and clips": ("model", "rnn_cell", "backbone", "backbone_weights", "pretrained_weights", "frames", "height",
                        "width", "resize", "sampling", "eval_clips", "eval_crops", "final_model"),
    "training recipe": ("batch_size", "learning_rate", "lr_schedule", "warmup_epochs", "weight_decay",
                        "label_smoothing", "grad_clip_norm", "freeze_backbone_epochs", "augment_flip", "augment_crop",
                        "mixed_precision"),
    "loader": ("loader_workers", "prefetch_batches", "decode_device", "on_bad_video", "decode_timeout_s"),
    "metrics": ("metrics_port", "metrics_addr", "pushgateway_url"),
    "multi-worker": ("num_workers", "worker_index", "worker_service", "job_name", "worker_port", "chief_job",
                     "peer_timeout_s",
                     "tf_config"),
}


def variable(field: str) -> str:
    """The environment variable a setting is read from (Kubernetes' and TensorFlow's own names first)."""
    alias = Settings.model_fields[field].validation_alias
    return " or ".join(alias.choices) if alias is not None else env_name(field)


def plain_type(field: str) -> str:
    """The setting's type in words: folder, file, path, integer, number, true|false, the allowed
    values (a|b|c), text, JSON, URL or address."""
    import typing

    info = Settings.model_fields[field]
    if isinstance(info.json_schema_extra, dict) and "kind" in info.json_schema_extra:
        return info.json_schema_extra["kind"]
    annotation = info.annotation
    text = str(annotation)
    literal = next((a for a in typing.get_args(annotation) + (annotation,) if typing.get_origin(a) is typing.Literal),
                   None)
    if literal is not None:
        return "|".join(map(str, typing.get_args(literal)))
    for marker, kind in (("path_type='dir'", "FOLDER"), ("path_type='file'", "FILE"), ("Path", "PATH"),
                         ("bool", "true|false"), ("int", "INTEGER"), ("float", "NUMBER"), ("SecretStr", "URL"),
                         ("IPvAnyAddress", "ADDRESS"), ("Json", "JSON")):
        if marker in text:
            return kind
    return "TEXT"


def default_text(field: str) -> str:
    """The default in words ("none" for no value)."""
    value = Settings.model_fields[field].default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def flag(field: str) -> str:
    """The command-line flag of a setting (Kubernetes' and TensorFlow's own name for those that have one)."""
    info = Settings.model_fields[field]
    return "--" + (info.validation_alias.choices[0] if info.validation_alias else field).lower().replace("_", "-")


def flag_text(field: str) -> str:
    """How the flag is written: `--reindex, --no-reindex` for a switch, else `--epochs INTEGER`."""
    if plain_type(field) == "true|false":
        return f"{flag(field)}, --no-{flag(field)[2:]}"
    return f"{flag(field)} {plain_type(field)}"


def help_text() -> str:
    """What `--help` prints: every setting by group, its variable, flag, type, default and meaning."""
    lines = ["usage: python entrypoint.py [--<setting> VALUE ...]", "",
             "Trains, evaluates, predicts with or prepares data for a video classifier (vidtrain). Every setting",
             f"is an environment variable {PREFIX}<NAME> (upper case) or the flag shown; a flag wins. An invalid",
             "value stops the job with exit code 2 before any work, naming the variable.", ""]
    for group, fields in GROUPS.items():
        lines.append(f"{group}:")
        for field in fields:
            info = Settings.model_fields[field]
            lines.append(f"  {variable(field)}  ({flag_text(field)})")
            body = info.description if "default:" in info.description else \
                f"{info.description} (default: {default_text(field)})"
            lines += textwrap.wrap(body, width=96, initial_indent="      ", subsequent_indent="      ")
        lines.append("")
    lines.append("Exit codes: 0 done; 1 transient (retry); 2 invalid configuration; 3 no usable data; "
                 "4 training diverged; 143/130 stopped by SIGTERM/SIGINT after a checkpoint.")
    return "\n".join(lines)


def _describe(err: dict) -> list[str]:
    """'VIDTRAIN_X='value': what is wrong / allowed' for one pydantic error (the checks across settings:
    one line each, their messages already name the variables)."""
    if not err["loc"]:
        return err["msg"].removeprefix("Value error, ").splitlines()
    field = str(err["loc"][0])
    info = Settings.model_fields.get(field)
    secret = info is not None and "SecretStr" in str(info.annotation)
    value = "**********" if secret else err.get("input")
    return [f"{variable(field) if field in Settings.model_fields else env_name(field)}={value!r}: "
            f"{err['msg']}{_allowed(info)}"]


def _allowed(info) -> str:
    """' (allowed: 1 <= value <= 1024)' from a numeric field's bounds, else ''."""
    if info is None:
        return ""
    words = {Ge: (">=", "ge"), Gt: (">", "gt"), Le: ("<=", "le"), Lt: ("<", "lt")}
    bounds = [f"{words[type(m)][0]} {getattr(m, words[type(m)][1])}" for m in info.metadata if type(m) in words]
    return f" (allowed: {' and '.join(bounds)})" if bounds else ""
