"""`lfq conformance` with each backend checked in a process of its own, at the same time.

A backend's run is mostly its compiler at work (inductor's C++ compiles, XLA's
programs, TensorFlow's traces), single-threaded for long stretches: one after the
other, the default run over four backends took about 150 s on a 2-core machine;
side by side, the processes share the cores, and the run takes about as long as
the CPU time of all of them divided by the cores (docs/conformance.md).

Each child process imports only its own framework (so the parent imports none),
loads its backend as a serial run would (the same messages and usage errors),
runs `lfq.conformance.runner.run_backend` and sends back its steps, as they
happen, and its results. The report lists the backends in the order a serial run
does. Backends registered in the parent (`--register`, `lfq.register`) are
registered again in each child, which starts fresh (`spawn`: no framework state
is forked).
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import time
import traceback

__all__ = ["run_in_processes"]

#: Messages a child puts on the queue: (kind, backend, payload...).
_STATUS, _STEP, _SKIPPED, _USAGE, _DONE, _CRASH = "status", "step", "skipped", "usage", "done", "crash"


def _child(name: str, registry: dict, registered: dict, asked: bool, options: dict, verbose: bool, messages) -> None:
    """Run backend `name` in this (spawned) process; every outcome goes to `messages`."""
    try:
        import logging

        from lfq import cli
        from lfq import registry as lfq_registry
        from lfq.conformance import runner

        for other, (target, extra, requires) in registry.items():
            lfq_registry._REGISTRY.setdefault(other, (target, extra, requires))
        cli._REGISTERED.update(registered)  # their load errors are usage errors, as in the parent
        if not verbose:  # as the serial run: compiled TensorFlow's retracing warnings are noise here
            logging.getLogger("tensorflow").setLevel(logging.ERROR)
        # Compiling in this process alone: inductor's pool of compile workers would compete
        # for the cores with the other backends' processes (and costs seconds to start).
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")

        def status(text, kind="note"):
            messages.put((_STATUS, name, text, kind))

        try:
            loaded = cli._load(name, asked, status, options["device"])
        except cli.UsageError as err:
            messages.put((_USAGE, name, str(err)))
            return
        if not loaded:
            messages.put((_SKIPPED, name))
            return
        start = time.perf_counter()
        results = runner.run_backend(
            name,
            progress=lambda s: messages.put((_STEP, name, s.what, s.done, s.total, s.seconds)),
            **options,
        )
        messages.put((_DONE, name, results, time.perf_counter() - start))
    except BaseException:  # noqa: B036 - whatever happens here must reach the parent
        messages.put((_CRASH, name, traceback.format_exc()))


def run_in_processes(names: list[str], asked: bool, options: dict, progress, jobs: int, verbose: bool):
    """Check backends `names` in up to `jobs` processes at once; the `Report`, in `names`' order.

    Args:
        names: registry names (built in, or registered in this process).
        asked: whether they were asked for by name (`--backend`: a failure to load is a
            usage error) or are every registered one (a backend that cannot load is skipped).
        options: `run_backend`'s keyword arguments (dtypes, full, device, case_names).
        progress: a `lfq.cli_progress.Progress` (its `status` and steps).
        jobs: processes at most at once.
        verbose: `-v` (TensorFlow's warnings kept).

    Raises:
        lfq.cli.UsageError: as a serial run would (the other processes are stopped).
    """
    from lfq import cli
    from lfq import registry as lfq_registry
    from lfq.conformance import runner
    from lfq.conformance.report import Report

    context = multiprocessing.get_context("spawn")  # never fork a process that may hold framework threads
    messages = context.Queue()
    registry = dict(lfq_registry._REGISTRY)
    waiting, running, finished = list(names), {}, {}
    try:
        while waiting or running:
            while waiting and len(running) < max(jobs, 1):
                name = waiting.pop(0)
                process = context.Process(
                    target=_child,
                    args=(name, registry, dict(cli._REGISTERED), asked, options, verbose, messages),
                    daemon=True,
                )
                process.start()
                running[name] = process
            progress.tick()  # a backend in one long compile still shows a line every 15 s
            try:
                message = messages.get(timeout=1.0)
            except queue_module.Empty:
                for name, process in list(running.items()):
                    if not process.is_alive() and process.exitcode not in (0, None):  # died without a word
                        running.pop(name)
                        finished[name] = _crashed(name, f"its process exited with status {process.exitcode}")
                continue
            kind, name = message[0], message[1]
            if kind == _STATUS:
                progress.status(*message[2:])
            elif kind == _STEP:
                progress(runner.Step(name, *message[2:]))
            elif kind == _USAGE:
                raise cli.UsageError(message[2])
            else:
                running.pop(name).join()
                if kind == _DONE:
                    finished[name] = (message[2], message[3])
                elif kind == _CRASH:
                    finished[name] = _crashed(name, message[2].strip().splitlines()[-1])
    finally:
        for process in running.values():
            process.terminate()
    report = Report()
    for name in names:
        if name in finished:
            results, seconds = finished[name]
            report.add(results[0].backend if results else name, results, seconds)
    return report, [name for name in names if name in finished]


def _crashed(name: str, why: str):
    from lfq.conformance.report import Result

    return [Result(name, "run", "-", None, "fail", None, None, None, f"the run stopped: {why}", "", None)], 0.0
