"""vidtrain: train, evaluate or predict a video classifier. Configuration: VIDTRAIN_* or --flags.

    python entrypoint.py [--epochs 3 ...]      (python entrypoint.py --help lists every setting)
"""

import logging
import os
import sys

from vidtrain.settings import ConfigError, load


def main(argv: list[str]) -> int:
    try:
        settings = load(argv)
    except ConfigError as exc:
        print("vidtrain: invalid configuration:", *exc.lines, sep="\n  ", file=sys.stderr)
        return 2
    user_onednn = "TF_ENABLE_ONEDNN_OPTS" in os.environ
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # under MultiWorkerMirroredStrategy: lines per step
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep its C++ chatter down
    onednn = os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # TF leaves it off on CPUs without AVX-512 VNNI
    logging.getLogger("vidtrain").info("TF_ENABLE_ONEDNN_OPTS=%s (%s)", onednn,
                                       "set by the user" if user_onednn else "vidtrain's default: oneDNN kernels on")
    from vidtrain.job import run

    return run(settings, progress=sys.stderr.isatty())


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
