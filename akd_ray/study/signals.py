"""Interrupts: SIGINT and SIGTERM become Tune's graceful stop, then `Interrupted`. No Ray import."""

from __future__ import annotations

import os
import signal
import threading
from typing import Any


class Interrupted(KeyboardInterrupt):
    """The user stopped the study (SIGINT or SIGTERM): finished trials are kept and a rerun resumes.
    A KeyboardInterrupt, so no `except Exception` on its way out (Tune's own cleanup) swallows it."""

    def __init__(self, signum: int, where: str = "the study"):
        super().__init__(signum, where)
        self.signum, self.where = signum, where

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Signals:
    """SIGINT and SIGTERM in the driver, installed after `ray.init` (which sets its own SIGTERM handler).

    The first signal during a Tune run asks Tune to stop as its own Ctrl-C handling does (SIGUSR1:
    running trials end at their last checkpoint, the experiment state is saved and stays resumable);
    `run_phase` then raises `Interrupted`. Outside a Tune run, or on a second signal, `Interrupted`
    is raised at once.
    """

    def __init__(self):
        self.signum: int | None = None
        self.in_tune = False
        self.stage = "the start of the study"  # what the driver is doing: for the message
        self._before: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            # Tune would install its own SIGINT handler, which stops the run but tells no one
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._before[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._before.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
            if self.in_tune:
                os.kill(os.getpid(), signal.SIGUSR1)  # Tune's graceful stop (tune.run registers it)
                return
        raise Interrupted(signum, self.stage)
