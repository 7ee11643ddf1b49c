"""Math-equivalence checks under a hard deadline: math-verify runs in worker processes killed on timeout.

math-verify's own timeouts use `signal.alarm` (main thread only) and cannot stop one long C call
(`9^{9^{9}}` is a single big-integer power that never returns to the interpreter), so a check
that overruns its deadline is stopped by killing its process. Workers are kept and reused, so a
normal check costs one pipe round trip on top of math-verify itself; a process's pool starts on
first use. A timed-out check (or one that hits the worker's memory cap) counts as wrong and is
counted in `stats()`.

Settings, read from the environment at first use (so Ray workers inherit them):
R1V_ANSWER_CHECK_TIMEOUT_S (5), R1V_ANSWER_CHECK_WORKERS (2), R1V_ANSWER_CHECK_MEMORY_MB (2048).
"""

from __future__ import annotations

import json
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

# The worker: a standalone script (no r1v_ray import, so it starts wherever the caller runs).
_WORKER_SOURCE = r"""
import ctypes, json, resource, signal, sys
try:
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: never outlive the caller
except Exception:
    pass
limit = int(sys.argv[1]) << 20
if limit > 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import logging
logging.disable(logging.WARNING)  # math-verify warns that its own timeouts are off: the caller kills instead
from math_verify import parse, verify

def check(pred, gold):
    g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    p = parse("\\boxed{" + pred + "}", parsing_timeout=None)
    return 1 if g and p and verify(g, p, timeout_seconds=None) else 0

check("1", "1")  # imports sympy and the LaTeX parser before the first deadline starts
out = sys.stdout.buffer
out.write(b"ready\n"); out.flush()
for line in sys.stdin.buffer:
    pred, gold = json.loads(line)
    try:
        code = check(pred, gold)
    except MemoryError:
        code = 2
    except Exception:  # math-verify raises on exotic input: an unparsable answer is wrong
        code = 0
    out.write(b"%d\n" % code); out.flush()
"""

START_TIMEOUT_S = 120.0  # a fresh worker imports sympy; on a loaded 2-core machine that can take a while


class CheckTimeout(Exception):
    """The check ran past its deadline (or the worker's memory cap) and its worker was killed."""


# Workers die with the thread that started them (PR_SET_PDEATHSIG), so one long-lived thread starts them all:
# a caller's short-lived thread may end while its worker is still useful to others.
_spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer-check-spawn")


def _reset_after_fork() -> None:
    """A forked child has none of the parent's threads or workers: it starts its own."""
    global _spawner, _pool, _pool_lock
    _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="answer-check-spawn")
    _pool, _pool_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


class _Worker:
    def __init__(self, memory_mb: int):
        argv = [sys.executable, "-c", _WORKER_SOURCE, str(memory_mb)]
        pipes = dict(stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0)
        self.proc = _spawner.submit(subprocess.Popen, argv, **pipes).result()
        self.ready = False

    def _readline(self, deadline: float) -> bytes | None:
        """One reply line, or None when the deadline passes first; b"" when the worker died."""
        fd, buf = self.proc.stdout.fileno(), b""
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 64)
            if not chunk:
                return b""
            buf += chunk
        return buf

    def wait_ready(self) -> None:
        if self.ready:
            return
        line = self._readline(time.monotonic() + START_TIMEOUT_S)
        if line != b"ready\n":
            self.kill()
            why = "did not start in time" if line is None else "exited at start (is math-verify installed?)"
            raise RuntimeError(f"answer-check worker {why}")
        self.ready = True

    def check(self, pred: str, gold: str, timeout_s: float) -> bool:
        self.wait_ready()
        self.proc.stdin.write(json.dumps([pred, gold]).encode() + b"\n")
        line = self._readline(time.monotonic() + timeout_s)
        if line is None or line == b"2\n":
            raise CheckTimeout(f"math-verify ran past {timeout_s:g}s" if line is None else "memory cap")
        if line == b"":
            raise BrokenPipeError("answer-check worker died")
        return line == b"1\n"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            pipe.close()


class CheckerPool:
    """Up to `size` reusable workers; callers on several threads each get their own worker."""

    def __init__(self, size: int, timeout_s: float, memory_mb: int):
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(max(1, size))
        self.counts: Counter = Counter()
        self.lock = threading.Lock()

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def equal(self, pred: str, gold: str) -> bool:
        """math-verify's verdict; False when the check times out (counted in `counts["timeouts"]`)."""
        self._count("checks")
        with self.slots:
            for attempt in range(2):  # a worker that died between calls (not a timeout) is replaced once
                try:
                    worker = self.idle.get_nowait()
                except queue.Empty:
                    worker = _Worker(self.memory_mb)
                try:
                    result = worker.check(pred, gold, self.timeout_s)
                except CheckTimeout:
                    worker.kill()
                    self.idle.put(_Worker(self.memory_mb))  # the replacement starts while the caller goes on
                    self._count("timeouts")
                    return False
                except (BrokenPipeError, OSError):
                    worker.kill()
                    if attempt:
                        raise
                    continue
                self.idle.put(worker)
                return result
        raise AssertionError("unreachable")

    def close(self) -> None:
        while True:
            try:
                self.idle.get_nowait().kill()
            except queue.Empty:
                return


_pool: CheckerPool | None = None
_pool_lock = threading.Lock()


def _env(name: str, default: str, kind: type):
    raw = os.environ.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        raise ValueError(f"{name}={raw!r}: expected a positive {'integer' if kind is int else 'number'}")
    return value


def pool() -> CheckerPool:
    """This process's pool, built from the environment on first use (and again in a forked child)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = CheckerPool(
                size=_env("R1V_ANSWER_CHECK_WORKERS", "2", int),
                timeout_s=_env("R1V_ANSWER_CHECK_TIMEOUT_S", "5", float),
                memory_mb=_env("R1V_ANSWER_CHECK_MEMORY_MB", "2048", int),
            )
        return _pool


def math_equal(pred: str, gold: str) -> bool:
    return pool().equal(pred, gold)


def stats() -> dict[str, int]:
    """Checks run and timed out in this process so far: {"checks": n, "timeouts": n}."""
    counts = pool().counts
    return {"checks": counts["checks"], "timeouts": counts["timeouts"]}
