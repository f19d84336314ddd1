"""How a running study looks to a person: plain lines (a log, a pipe) or a rich live table (a terminal)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO



def failure_reason(trial) -> str:
    """The last line of a failed trial's traceback: what went wrong, in one line."""
    text = ""
    path = getattr(trial, "error_file", None)
    if path and Path(path).is_file():
        text = Path(path).read_text(errors="replace")
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "failed (no error text)"


def clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def val_text(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def trial_line(phase: str, trial, state: str, info: dict) -> str:
    """One finished trial in one line: which, how it ended, its validation (and tau_max), the phase's count."""
    c, r = trial.config or {}, trial.last_result or {}
    what = f"{c.get('method')} {c.get('teacher')}->{c.get('student')}"
    if c.get("phase") == "confirm":
        what += f" seed {c.get('seed')}"
    if state == "failed":
        result = f"FAILED: {failure_reason(trial)}"
    else:
        result = f"val {val_text(r.get('val_best'))}" + (f" test {val_text(r.get('test_metric'))}" if state == "done" else
                                                     " (stopped early)")
        if c.get("tau_max") is not None:
            result += f" tau_max {c['tau_max']:g}"
    return f"[{phase} {info['ended']}/{info['total']}] {what}: {result}  (ETA {clock(info['eta'])})"


def teacher_epoch_line(name: str, info: dict) -> str:
    """`teacher minilm: epoch 3/20, val 0.8412`: a teacher's progress as a plain line."""
    val = f", val {info['val']:.4f}" if info.get("val") is not None else ""
    return f"teacher {name}: epoch {info['epoch']}/{info['epochs']}{val}"


class View:
    def __enter__(self) -> "View":
        return self

    def __exit__(self, *exc) -> None:
        pass

    def phase(self, name: str, status: dict) -> None: ...

    def teacher(self, name: str, info: dict) -> None: ...

    def trial(self, phase: str, trial, state: str, info: dict) -> None: ...

    def refresh(self, status: dict) -> None: ...


class PlainView(View):
    """Not a terminal (CI, `ray job submit`, a pipe): plain lines, one per finished trial, no control codes."""

    def __init__(self, out: IO[str]):
        self.out = out
        self._epochs: dict[str, int] = {}  # teacher -> the last epoch said: one line per epoch, not per poll

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def phase(self, name: str, status: dict) -> None:
        if name in ("teachers", "search", "confirm"):
            self.say(f"-- {name}")

    def teacher(self, name: str, info: dict) -> None:
        if info["state"] == "training":
            if info["epoch"] != self._epochs.get(name):
                self._epochs[name] = info["epoch"]
                self.say(teacher_epoch_line(name, info))
            return
        took = f" in {clock(info['seconds'])}" if info.get("seconds") is not None else ""
        self.say(f"teacher {name}: {info['state']}{took}")

    def trial(self, phase: str, trial, state: str, info: dict) -> None:
        self.say(trial_line(phase, trial, state, info))


class LiveView(PlainView):
    """A terminal: one live table (rich) under the finished-trial lines."""

    def __init__(self, out: IO[str]):
        from rich.console import Console
        from rich.live import Live

        super().__init__(out)
        self.console = Console(file=out, force_terminal=True)
        self.status: dict = {}
        self.live = Live(console=self.console, refresh_per_second=4, transient=False, get_renderable=self.render,
                         redirect_stdout=False, redirect_stderr=False)

    def __enter__(self) -> "LiveView":
        self.live.start()
        return self

    def __exit__(self, *exc) -> None:
        self.live.stop()

    def say(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def refresh(self, status: dict) -> None:
        self.status = status

    def phase(self, name: str, status: dict) -> None:
        self.status = status

    def teacher(self, name: str, info: dict) -> None:
        if info["state"] != "training":
            super().teacher(name, info)

    def render(self):
        """What the live region shows now (called from rich's refresh thread: reads copies only)."""
        try:
            self._last = self._render()
        except Exception:  # the main thread changed the status under us: show the last frame again
            pass
        return getattr(self, "_last", "")

    def _render(self):
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        s = self.status
        if not s:
            return Text("starting ...")
        phase = s.get("phase", "")
        elapsed = time.time() - s.get("started", time.time())
        parts: list = []
        if phase == "teachers":
            t = Table.grid(padding=(0, 1))
            for name, info in list(s.get("teachers", {}).items()):
                n, of = info.get("epoch", 0), info.get("epochs") or 1
                t.add_row(Text(f"teacher {name}"), ProgressBar(total=of, completed=n, width=30),
                          Text(f"epoch {n}/{of}" if info["state"] == "training" else info["state"]))
            parts.append(t)
        info = s.get("phases", {}).get(phase)
        if info:
            t = Table(box=None, padding=(0, 1), header_style="bold")
            for col in ("pair", "method", "done", "running", "stopped", "failed", "of", "best val", "tau_max"):
                t.add_column(col, justify="left" if col in ("pair", "method") else "right")
            for key, g in list(info["groups"].items()):
                pair, method = key.split("|")
                t.add_row(pair, method, *(str(g[k]) for k in ("done", "running", "stopped", "failed", "budget")),
                          val_text(g["best"]), "-" if g["tau_max"] is None else f"{g['tau_max']:g}")
            parts.append(t)
            head = f"{phase}: {info['ended']}/{info['total']} trials, elapsed {clock(elapsed)}, ETA {clock(info['eta'])}"
        else:
            head = f"{phase}: elapsed {clock(elapsed)}"
        return Group(Text(f"{s['study']} -- {head}", style="bold"), *parts)
