"""Stopping a job cleanly: SIGTERM (preemption), SIGHUP (the terminal or ssh session of a job
started in the foreground went away) or Ctrl-C asks for a checkpoint, agreed on by every process.
The RL loop asks between the phases of a step too (`Preempted`): a step stopped before its update
is given up, and the run saves the step before it, so the checkpoint is written within a
preemption's notice rather than after a whole step.

Every check is a collective (an all-gather of each process's flag), so all processes stop at the
same check and save the same step, whichever of them got the signal. This is what JAX's own
preemption sync point (`multihost_utils.reached_preemption_sync_point`) provides, at step
granularity; it is not used because its notice comes from a C-level SIGTERM handler installed by
`jax.distributed.initialize`, which the Python handler here (needed for SIGINT and SIGHUP, and for
one process) replaces."""

from __future__ import annotations

import logging
import signal
import threading

import jax
import numpy as np

log = logging.getLogger("flowrl_jax")


class Preempted(Exception):
    """A stop asked for during a step, before the step changed the train state: the step is given
    up (its prompts are drawn again on resume). args[0]: the signal's name."""


class StopFlag:
    """Set by SIGTERM (preemption), SIGHUP (unless ignored, as under nohup) or SIGINT (Ctrl-C);
    every process agrees on it where `requested` is called. A second Ctrl-C stops at once
    (KeyboardInterrupt), without the checkpoint."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self):
        self.local = None  # the name of the signal that asked to stop
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                if s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN:
                    continue  # nohup: the job was asked to outlive its terminal
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.local == "SIGINT" and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "%s: saving a checkpoint, then stopping%s",
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

    def check(self) -> None:
        """Between the phases of a step: raise Preempted if any process was asked to stop."""
        name = self.requested()
        if name:
            raise Preempted(name)
