"""Subprocesses in tests, one implementation for every test that runs a command and waits for it.

The rule: a slow machine must never fail a correct run. So

* every wait has the same generous deadline (:data:`TIMEOUT`, 15 minutes) while the work each test
  gives its processes is sized to take a small fraction of it on 2 busy cores;
* every process runs in its own process group with its output in a log file (under the test's
  ``tmp_path`` when given), so output survives a kill and every failure message ends with the
  tails of the processes' own stdout/stderr;
* nothing is left behind: whatever is still running when a wait ends (deadline, a failed
  sibling, an exception in the test) is killed with its whole process group.

:func:`run` runs one command to its end (``subprocess.run`` with the rules above);
:func:`start` and :func:`wait_all` run several at once (a failure of one ends the wait at once:
the others are killed instead of waiting for a partner that is gone).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 900  # seconds: the deadline of every wait (the work takes a small fraction of it)
TAIL = 3000  # characters of each log in a failure message


def python(*args) -> list:
    """``[sys.executable, *args]`` (as strings): a command that runs this test's Python."""
    return [sys.executable, *map(str, args)]


class Job:
    """A started process: ``name``, ``args``, ``log`` (its stdout+stderr, or stdout only when
    ``err_log`` is set) and ``popen``."""

    def __init__(self, name, args, log, popen, err_log=None):
        self.name, self.args, self.log, self.popen, self.err_log = name, args, Path(log), popen, err_log

    @property
    def returncode(self):
        return self.popen.returncode

    def output(self) -> str:
        """Everything the process wrote so far (stdout, then stderr when kept apart)."""
        text = _read(self.log)
        return text + _read(self.err_log) if self.err_log is not None else text

    def tail(self, chars=TAIL) -> str:
        return f"--- {self.name} (exit {self.popen.poll()}; log {self.log})\n" + self.output()[-chars:]


def _read(path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def start(args, log, *, env=None, cwd=ROOT, name=None, err_log=None) -> Job:
    """Start ``args`` (a full command) in its own process group, stdout and stderr into the file
    ``log`` (or stderr into ``err_log``); ``env``: the whole environment (default: this one)."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        err = open(err_log, "w") if err_log is not None else subprocess.STDOUT
        try:
            popen = subprocess.Popen([str(a) for a in args], stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, start_new_session=True)
        finally:
            if err_log is not None:
                err.close()
    return Job(name or log.stem, args, log, popen, err_log)


def kill(jobs) -> None:
    """SIGKILL the process group of every job still running, and reap it. (Finished jobs are not
    touched: their pid may already belong to another process.)"""
    for job in jobs:
        if job.popen.poll() is None:
            try:
                os.killpg(job.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            job.popen.wait()


class Failed(AssertionError):
    """Some jobs failed or ran past the deadline; the message holds their logs' tails."""

    def __init__(self, message, jobs):
        super().__init__(message)
        self.jobs = list(jobs)


def failure_message(what, jobs, extra=()) -> str:
    """``what`` and the log tails of ``jobs`` (and of ``extra``, e.g. processes still running)."""
    return "\n".join([what, *(j.tail() for j in list(jobs) + list(extra))])


def wait_all(jobs, timeout=TIMEOUT, *, ok=(0,)) -> float:
    """Wait until every job has exited with a code in ``ok``. Raises :class:`Failed` (after
    killing the rest) as soon as one exits otherwise or ``timeout`` seconds pass; kills whatever
    still runs if anything else interrupts the wait. Returns the seconds waited."""
    jobs = list(jobs)
    t0 = time.monotonic()
    try:
        while True:
            codes = [j.popen.poll() for j in jobs]
            bad = [j for j, c in zip(jobs, codes) if c is not None and c not in ok]
            if bad:
                kill(jobs)
                raise Failed(failure_message(f"{', '.join(j.name for j in bad)} failed (exit "
                                             f"{[j.returncode for j in bad]}); the others were killed", jobs), jobs)
            if all(c is not None for c in codes):
                return time.monotonic() - t0
            if time.monotonic() - t0 > timeout:
                kill(jobs)
                raise Failed(failure_message(f"not finished within {timeout} s (killed)", jobs), jobs)
            time.sleep(0.2)
    finally:
        kill(jobs)


def run(args, *, timeout=TIMEOUT, env=None, cwd=ROOT, log_dir=None, name="command"):
    """Run ``args`` (a full command, e.g. ``python(script, "--flag")``) to its end, like
    ``subprocess.run(args, capture_output=True, text=True)``: returns a ``CompletedProcess`` with
    ``returncode``, ``stdout``, ``stderr`` (any exit code: the caller checks it). stdout and
    stderr are written to ``<log_dir>/<name>.out`` / ``.err`` (default: a temporary folder);
    past ``timeout`` seconds the process group is killed and the test fails with both tails."""
    with tempfile.TemporaryDirectory(prefix="ku-test-run-") as tmp:
        folder = Path(log_dir) if log_dir is not None else Path(tmp)
        job = start(args, folder / f"{name}.out", env=env, cwd=cwd, name=name, err_log=folder / f"{name}.err")
        try:
            job.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill([job])
            pytest.fail(f"{' '.join(map(str, args))[:500]}\nnot finished within {timeout} s (killed)\n"
                        f"--- stdout\n{_read(job.log)[-TAIL:]}\n--- stderr\n{_read(job.err_log)[-TAIL:]}")
        finally:
            kill([job])
        return subprocess.CompletedProcess(args, job.returncode, _read(job.log), _read(job.err_log))
