"""What the job runs on, and TensorFlow loaded without its start-up noise.

TensorFlow's C++ side writes to the process's stderr while it loads and looks for devices, before
(and regardless of) TF_CPP_MIN_LOG_LEVEL: absl's "All log messages before absl::InitializeLog()",
oneDNN's notice, "Could not find cuda drivers" and, on a machine without a GPU driver,
"E0000 ... failed call to cuInit". On a CPU machine those are expected and look like errors. So
`load_tensorflow` captures file descriptor 2 while TensorFlow loads and enumerates devices, drops
the lines known to be expected on this machine and passes every other line on as a warning.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("vidtrain")

# Lines TensorFlow writes while loading that say nothing is wrong.
_ALWAYS_EXPECTED = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Attempting to register factory for plugin",  # cuDNN/cuFFT/cuBLAS registered twice: TF's own packaging
    "TF-TRT Warning: Could not find TensorRT",
)
# Lines expected only where there is no NVIDIA driver: on a GPU machine they are real problems.
_EXPECTED_WITHOUT_GPU = ("Could not find cuda drivers on your machine", "failed call to cuInit")


def has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def load_tensorflow():
    """Import TensorFlow and list its devices with TensorFlow's start-up lines filtered (see the
    module docstring); returns (tensorflow module, GPU device names)."""
    expected = _ALWAYS_EXPECTED + (() if has_nvidia_driver() else _EXPECTED_WITHOUT_GPU)
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        text = captured.read().decode(errors="replace")
    for line in text.splitlines():
        if line.strip() and not any(marker in line for marker in expected):
            log.warning("tensorflow: %s", line.strip())
    return tf, gpus


def describe_machine(gpus: list[str]) -> str:
    """'CPU: <model>, <n> cores (<notable instruction sets>); GPUs: ...' in one line."""
    model, flags = _cpu()
    notable = [name for flag, name in (("avx512f", "AVX-512"), ("avx512_vnni", "VNNI"), ("avx512_bf16", "AVX512-BF16"),
                                       ("amx_bf16", "AMX-BF16"), ("avx2", "AVX2")) if flag in flags]
    if "AVX-512" in notable:
        notable = [n for n in notable if n != "AVX2"]
    cpu = f"CPU: {model}, {len(os.sched_getaffinity(0))} cores" + (f" ({', '.join(notable)})" if notable else "")
    return f"{cpu}; GPUs: {', '.join(gpus)}" if gpus else f"{cpu}; no GPU"


def bf16_native() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX), as oneDNN then does."""
    return bool({"avx512_bf16", "amx_bf16"} & _cpu()[1])


def _cpu() -> tuple[str, set[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", set()
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return (model[1].strip() if model else os.uname().machine), set(flags[1].split()) if flags else set()
