"""`lfq conformance` with each backend checked in a process of its own, at the same time.

A backend's run is mostly its compiler at work (inductor's C++ compiles, XLA's
programs, TensorFlow's traces), single-threaded for long stretches: one after the
other, the default run over four backends took 153 s on a loaded 2-core machine;
side by side the processes share the cores, and the run takes about the CPU time
of all of them divided by the cores (docs/conformance.md).

Each child is a fresh interpreter (`python -m lfq.cli_parallel`: nothing of the
parent's framework state, and the caller's script is never imported again) that
imports only its own framework, loads its backend as a serial run would (the same
messages and usage errors), runs `lfq.conformance.runner.run_backend` and sends
back, pickled on its stdout, its steps as they happen and then its results; its
stderr is the parent's. The report lists the backends in the order a serial run
does. Backends registered in the parent (`--register`, `lfq.register`) are
registered again in each child, with the parent's `sys.path`.
"""

from __future__ import annotations

import os
import pickle
import queue as queue_module
import subprocess
import sys
import threading
import time
import traceback

__all__ = ["run_in_processes"]

#: Messages a child sends: (kind, backend, payload...).
_STATUS, _STEP, _SKIPPED, _USAGE, _DONE, _CRASH, _EOF = "status", "step", "skipped", "usage", "done", "crash", "eof"
_FINAL = (_SKIPPED, _USAGE, _DONE, _CRASH)


def _child_main() -> None:
    """The child: read its job from stdin, run it, send every outcome pickled on the real stdout."""
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a framework prints goes to stderr, never into the channel
    job = pickle.load(sys.stdin.buffer)
    name = job["name"]

    def send(*message) -> None:
        pickle.dump(message, channel)
        channel.flush()

    try:
        _child_run(job, send)
    except BaseException:  # noqa: B036 - whatever happens here must reach the parent
        send(_CRASH, name, traceback.format_exc())
    channel.close()


def _child_run(job: dict, send) -> None:
    import logging

    sys.path[:] = job["sys_path"]
    from lfq import cli
    from lfq import registry as lfq_registry
    from lfq.conformance import runner

    name = job["name"]
    for other, entry in job["registry"].items():
        lfq_registry._REGISTRY.setdefault(other, entry)
    cli._REGISTERED.update(job["registered"])  # their load errors are usage errors, as in the parent
    if not job["verbose"]:  # as the serial run: compiled TensorFlow's retracing warnings are noise here
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        loaded = cli._load(name, job["asked"], lambda text, kind="note": send(_STATUS, name, text, kind), job["device"])
    except cli.UsageError as err:
        send(_USAGE, name, str(err))
        return
    if not loaded:
        send(_SKIPPED, name)
        return
    start = time.perf_counter()
    results = runner.run_backend(
        name, progress=lambda s: send(_STEP, name, s.what, s.done, s.total, s.seconds), **job["options"]
    )
    send(_DONE, name, results, time.perf_counter() - start)


def _read(name: str, stream, messages: queue_module.Queue) -> None:
    """Forward child `name`'s messages to `messages`, then an end-of-stream mark."""
    try:
        while True:
            messages.put(pickle.load(stream))
    except (EOFError, pickle.UnpicklingError, OSError):
        pass
    messages.put((_EOF, name))


def run_in_processes(names: list[str], asked: bool, options: dict, progress, jobs: int, verbose: bool):
    """Check backends `names` in up to `jobs` processes at once.

    Args:
        names: registry names (built in, or registered in this process).
        asked: whether they were asked for by name (`--backend`: a failure to load is a
            usage error) or are every registered one (a backend that cannot load is skipped).
        options: `run_backend`'s keyword arguments (dtypes, full, device, case_names).
        progress: a `lfq.cli_progress.Progress` (its `status`, steps and `tick`).
        jobs: processes at most at once.
        verbose: `-v` (TensorFlow's warnings kept).

    Returns:
        `(report, names run)`: the `Report` in `names`' order, and the backends that ran.

    Raises:
        lfq.cli.UsageError: as a serial run would (the other processes are stopped).
    """
    from lfq import cli
    from lfq import registry as lfq_registry
    from lfq.conformance import runner
    from lfq.conformance.report import Report

    env = dict(os.environ)
    # Each process compiles alone: inductor's pool of compile workers would compete for the
    # cores with the other backends' processes (and takes seconds to start).
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    common = dict(
        registry=dict(lfq_registry._REGISTRY),
        registered=dict(cli._REGISTERED),
        asked=asked,
        options=options,
        device=options.get("device"),
        verbose=verbose,
        sys_path=list(sys.path),
    )
    messages: queue_module.Queue = queue_module.Queue()
    waiting, ended = list(names), set()
    running: dict[str, subprocess.Popen] = {}
    finished: dict[str, tuple] = {}
    try:
        while waiting or running:
            while waiting and len(running) < max(jobs, 1):
                name = waiting.pop(0)
                process = subprocess.Popen(
                    [sys.executable, "-m", "lfq.cli_parallel"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
                )
                assert process.stdin is not None and process.stdout is not None  # both are pipes
                process.stdin.write(pickle.dumps(dict(common, name=name)))
                process.stdin.close()
                threading.Thread(target=_read, args=(name, process.stdout, messages), daemon=True).start()
                running[name] = process
            progress.tick()  # a backend in one long compile still shows a line every 15 s
            try:
                message = messages.get(timeout=1.0)
            except queue_module.Empty:
                continue
            kind, name = message[0], message[1]
            if kind == _STATUS:
                progress.status(*message[2:])
            elif kind == _STEP:
                progress(runner.Step(name, *message[2:]))
            elif kind == _USAGE:
                raise cli.UsageError(message[2])
            elif kind == _DONE:
                finished[name] = (message[2], message[3])
            elif kind == _CRASH:
                finished[name] = _crashed(name, message[2].strip().splitlines()[-1])
            if kind in _FINAL:
                ended.add(name)
            if kind == _EOF:
                code = running.pop(name).wait()
                if name not in ended:  # died without a word (killed, out of memory)
                    finished[name] = _crashed(name, f"its process exited with status {code}")
    finally:
        for process in running.values():
            process.kill()
            process.wait()
    report = Report()
    for name in names:
        if name in finished:
            results, seconds = finished[name]
            report.add(results[0].backend if results else name, results, seconds)
    return report, [name for name in names if name in finished]


def _crashed(name: str, why: str):
    from lfq.conformance.report import Result

    return [Result(name, "run", "-", None, "fail", None, None, None, f"the run stopped: {why}", "", None)], 0.0


if __name__ == "__main__":
    _child_main()
