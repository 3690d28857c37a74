"""Progress of `lfq conformance` on stderr: the runner's steps, one or several backends at once.

The report goes to stdout; this writes only to its stream (stderr), so the report
and `--json` stay clean. Backends checked in parallel processes
(`lfq.cli_parallel`) report their steps here too, interleaved: every line names
its backend, and the terminal counter shows each running backend's count.
"""

from __future__ import annotations

import os
import shutil
import sys
import time

__all__ = ["Progress", "progress_mode"]


class Progress:
    """Renders the runner's steps on stderr.

    "counter": one line rewritten in place (a terminal), with the count of every
    backend at work; "lines": a line as each backend loads, starts and ends, and one
    with its count at least every `LINE_EVERY` seconds of its run; "verbose": those
    and a line per step; "quiet": nothing.
    """

    #: In "lines" mode, a line with the count at least this often (seconds of a backend's run).
    LINE_EVERY = 15.0

    def __init__(self, mode: str, stream=None):
        self.mode, self.stream = mode, stream or sys.stderr
        self._live = False  # a counter line is on screen
        self._last_line: dict[str, float] = {}  # per backend: seconds into its run of its last "lines" line
        self._running: dict[str, str] = {}  # per backend at work: its counter text
        self._latest: dict[str, tuple] = {}  # per backend at work: (its last step, when it came)

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed stderr never stops the run
            self.mode = "quiet"

    def _clear(self) -> None:
        if self._live:
            self._write("\r\033[K")
            self._live = False

    def status(self, text: str, kind: str = "note") -> None:
        """A message outside the steps: "live" shows only as the counter line (replaced by the
        next), "log" only as a line of the "lines" and "verbose" modes, "note" always."""
        if (
            self.mode == "quiet"
            or (kind == "live" and self.mode != "counter")
            or (kind == "log" and self.mode == "counter")
        ):
            return
        self._clear()
        if kind == "live":
            self._write(text + " ...")
            self._live = True
        else:
            self._write(text + "\n")
            self._redraw()

    def _redraw(self) -> None:
        """The counter line of the backends at work (counter mode), cut to the terminal's width."""
        if self.mode != "counter" or not self._running:
            return
        line = " | ".join(self._running.values())
        width = shutil.get_terminal_size((120, 24)).columns - 1
        self._clear()
        self._write(line if len(line) <= width else line[: max(width - 3, 1)] + "...")
        self._live = True

    def __call__(self, step) -> None:
        if self.mode == "quiet":
            return
        if not hasattr(step, "total"):  # a plain line from another caller of the runner
            self.status(str(step))
            return
        backend = step.backend
        self._latest[backend] = (step, time.monotonic())
        if getattr(step, "what", None) == "done":
            self._running.pop(backend, None)
            self._latest.pop(backend, None)
            self._clear()
            self._write(f"{backend}: done, {step.total} steps in {step.seconds:.1f} s\n")
            self._redraw()
        elif self.mode == "counter":
            self._running[backend] = f"{backend}: {step.done}/{step.total} {step.what} ({step.seconds:.0f} s)"
            self._redraw()
        elif self.mode == "verbose":
            self._write(f"{backend} [{step.done + 1}/{step.total}, {step.seconds:.1f} s]: {step.what}\n")
        elif step.done == 0:
            self._write(f"{backend}: checking, {step.total} steps ...\n")
            self._last_line[backend] = step.seconds
        elif step.seconds - self._last_line.get(backend, 0.0) >= self.LINE_EVERY:
            # a compiling backend can take minutes: never silent for long
            self._write(f"{backend}: {step.done}/{step.total} steps ({step.seconds:.0f} s), {step.what}\n")
            self._last_line[backend] = step.seconds

    def tick(self) -> None:
        """In "lines" mode, a line for each backend silent for `LINE_EVERY` seconds in one long
        step (a compile): its count, its step and the time so far. Called by a run that waits
        (the parallel run, each second); the steps alone print nothing until the next one."""
        if self.mode != "lines":
            return
        for backend, (step, received) in list(self._latest.items()):
            seconds = step.seconds + time.monotonic() - received
            if seconds - self._last_line.get(backend, 0.0) >= self.LINE_EVERY:
                self._write(f"{backend}: {step.done}/{step.total} steps ({seconds:.0f} s), {step.what}\n")
                self._last_line[backend] = seconds

    def finish(self) -> None:
        self._clear()


def progress_mode(quiet: bool, verbose: bool) -> str:
    """The mode for the flags and stderr: "quiet", "verbose", "counter" (a terminal) or "lines"."""
    if quiet:
        return "quiet"
    if verbose:
        return "verbose"
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "counter" if tty and os.environ.get("TERM") != "dumb" else "lines"
