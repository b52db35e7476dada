"""vidtrain: train, evaluate or predict a video classifier. Configuration: VIDTRAIN_* or --flags.

    python entrypoint.py [--epochs 3 ...]      (python entrypoint.py --help lists every setting)
"""

import logging
import os
import sys

from vidtrain.settings import ConfigError, help_text, load


def invalid(lines: list[str]) -> int:
    print("vidtrain: invalid configuration:", *lines, sep="\n  ", file=sys.stderr)
    return 2


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(help_text())
        return 0
    try:
        settings = load(argv)
    except ConfigError as exc:
        return invalid(exc.lines)
    user_onednn = "TF_ENABLE_ONEDNN_OPTS" in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep its C++ chatter down
    onednn = os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # TF leaves it off on CPUs without AVX-512 VNNI
    from prometheus_client import CollectorRegistry

    from vidtrain.metrics import serve

    registry = CollectorRegistry()
    try:  # before TensorFlow loads: a port in use is a configuration problem, found in a second
        server = serve(registry, str(settings.metrics_addr), settings.metrics_port)
    except OSError as exc:
        return invalid([f"VIDTRAIN_METRICS_PORT={settings.metrics_port}: cannot serve metrics on "
                        f"{settings.metrics_addr}:{settings.metrics_port} ({exc.strerror})"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # under MultiWorkerMirroredStrategy: lines per step
    from vidtrain.runtime import bf16_native, describe_machine, load_tensorflow

    tf, gpus = load_tensorflow()
    who = "TF_ENABLE_ONEDNN_OPTS set by the user" if user_onednn else "vidtrain's default"
    log = logging.getLogger("vidtrain")
    log.info("vidtrain on %s; TensorFlow %s, oneDNN %s (%s)", describe_machine(gpus), tf.__version__,
             "on" if onednn == "1" else "off", who)
    if settings.mixed_precision == "fp16" and not gpus:
        server.shutdown()
        return invalid(["VIDTRAIN_MIXED_PRECISION=fp16: float16 needs a GPU (a CPU emulates it, slower than "
                        "float32); on this CPU use bf16 (with AVX512-BF16 or AMX) or off"])
    if settings.mixed_precision == "bf16" and not gpus and not bf16_native():
        log.warning("VIDTRAIN_MIXED_PRECISION=bf16 on a CPU without AVX512-BF16 or AMX: bfloat16 is emulated "
                    "there and usually slower than float32")
    from vidtrain.job import run

    return run(settings, progress=sys.stderr.isatty(), registry=registry, server=server)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code in (130, 143):
        # Stopped: the checkpoint is written, synced and renamed, every loader thread joined. Skip the
        # interpreter's teardown of TensorFlow (1.5 s on a 2-core EPYC) so that the pod ends well
        # inside its grace period.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
