"""Stopping a training run cleanly on preemption (SIGTERM, or a pod's preemption notice)."""

from __future__ import annotations

import logging
import signal
from typing import Any


class PreemptionWatcher:
    """Tells the loop to checkpoint and stop. A context manager (restores the old handler).

    Single process: a SIGTERM handler sets a flag. Distributed: every process asks orbax's
    ``reached_preemption(step)`` each step (JAX's coordination service catches the signal and
    agrees on a step), so all processes save the same step; no Python handler is installed
    there, it would replace JAX's.
    """

    def __init__(self, distributed: bool):
        self.distributed = distributed
        self.flag = False
        self._previous: Any = None
        if not distributed:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._handle)
            except ValueError:  # not the main thread
                self._previous = None

    def _handle(self, signum: int, frame: Any) -> None:
        logging.warning("received signal %d: checkpointing and stopping", signum)
        self.flag = True

    def should_stop(self, step: int) -> bool:
        if self.distributed:
            from orbax.checkpoint import utils as ocp_utils

            try:
                if ocp_utils.reached_preemption(step):
                    self.flag = True
            except RuntimeError:  # preemption service disabled
                pass
        return self.flag

    def close(self) -> None:
        if not self.distributed and self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def __enter__(self) -> PreemptionWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
