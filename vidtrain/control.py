"""The training loop's control surface, importable without TensorFlow: the stop request that
signals set, the events a caller may act on, and the divergence the loop reports."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("vidtrain")


class StopRequest:
    """SIGTERM / SIGINT turned into a flag: set by the handler (main thread), read by the loop
    (main thread). As a context manager it installs the handlers and restores the previous ones."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT: the first asks for a checkpoint and a clean stop; a second
        SIGINT interrupts at once. Call again after anything that takes the signals over
        (creating a MultiWorkerMirroredStrategy replaces the SIGTERM handler)."""
        def handle(signum, frame):
            log.warning("%s received: stopping after the current step", signal.Signals(signum).name)
            self.signum = signum
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def __enter__(self) -> StopRequest:
        self._previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        self.install()
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class LoopEvents:
    """Points in the loop where a caller may act (tests inject faults here: a signal at the last
    batch or during validation, weights made non-finite). Called on the training thread."""

    def after_step(self, epoch: int, step: int, model, logs: dict) -> None:
        """Step `step` (1-based) of epoch `epoch` (0-based) is done; logs: that step's loss, clips."""

    def after_val_batch(self, epoch: int, batch: int) -> None:
        """Validation batch `batch` (1-based) of epoch `epoch` is done."""


class Diverged(ArithmeticError):
    """The training loss became NaN or infinite (exit code 4)."""

    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"training diverged: the loss is {loss} at epoch {epoch}, step {step}; "
                         "nothing of that epoch was recorded (try a lower VIDTRAIN_LEARNING_RATE)")
        self.epoch, self.step, self.loss = epoch, step, loss
