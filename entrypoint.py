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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow loads: keep its C++ chatter down
    from vidtrain.job import run

    return run(settings, progress=sys.stderr.isatty())


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
