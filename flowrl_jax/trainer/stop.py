"""Stopping a job cleanly: SIGTERM (preemption) or Ctrl-C asks for a checkpoint at the end of the
step, agreed on by every process."""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

log = logging.getLogger("flowrl_jax")


class StopFlag:
    """Set by SIGTERM (preemption) or SIGINT (Ctrl-C); every process agrees on it at the end of a
    step. A second Ctrl-C stops at once (KeyboardInterrupt), without the checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.local = None  # the name of the signal that asked to stop
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.local == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "%s: saving a checkpoint after this step, then stopping%s",
            name,
            " (Ctrl-C again stops at once, without it)" if name == "SIGINT" else "",
        )
        self.local = name

    def requested(self) -> str | None:
        """The signal that asked this run to stop, on any process, or None."""
        if jax.process_count() == 1:
            return self.local
        from jax.experimental import multihost_utils

        code = self.SIGNALS.index(signal.Signals[self.local]) + 1 if self.local else 0
        codes = np.asarray(multihost_utils.process_allgather(np.array([code])))
        return signal.Signals(self.SIGNALS[int(codes.max()) - 1]).name if codes.max() else None

    def restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
