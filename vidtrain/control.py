"""The training loop's control surface, importable without TensorFlow: the stop request that
signals set, the events a caller may act on, and the divergence the loop reports."""

from __future__ import annotations

import logging
import signal

log = logging.getLogger("vidtrain")


class Stopped(BaseException):
    """Raised by the signal handler while the job is still setting up (`StopRequest.immediate`).
    A BaseException, as KeyboardInterrupt is: the signal may land inside code that catches every
    Exception (logging's emit does, and would swallow the stop)."""


class StopRequest:
    """SIGTERM / SIGINT turned into a flag: set by the handler (main thread), read by the loop
    (main thread). As a context manager it installs the handlers and restores the previous ones.

    While `immediate` is true (setting up: probing, generating the demo set) there is nothing to
    checkpoint, so the handler raises `Stopped` at once instead of waiting for a step."""

    signum: int | None = None
    immediate: bool = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def install(self) -> None:
        """Handle SIGTERM and SIGINT: the first asks for a checkpoint and a clean stop; a second
        SIGINT interrupts at once. Call again after anything that takes the signals over
        (creating a MultiWorkerMirroredStrategy replaces the SIGTERM handler)."""
        def handle(signum, frame):
            self.signum = signum
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if self.immediate:
                log.warning("%s received while setting up: stopping now", signal.Signals(signum).name)
                raise Stopped(signal.Signals(signum).name)
            log.warning("%s received: stopping after the current step", signal.Signals(signum).name)

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
