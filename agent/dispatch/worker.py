"""The solver process: the optimiser runs in a child process that the control process can recycle and kill.

Why a process and not a thread: every solve of the dispatch LP peaks at a few hundred MB of native memory (cvxpy's
canonicalisation, HiGHS), which glibc keeps after the solve, per thread arena; a thread that overruns its budget
cannot be stopped; and importing cvxpy, scipy and highspy alone takes ~80 MB. In a child process all of that stays
out of the control process, which never imports them: it sends the PlanInputs (dataclasses of numpy arrays) and gets
a Plan back (agent.dispatch.plan, also free of cvxpy), pickled over a Unix socket pair (no network port).

The child is a fresh interpreter (`subprocess`, exec: never a fork of a process that runs an event loop and threads)
running `serve`. It imports the solver stack, reports ready, then runs one job at a time: a module-level function
and its arguments (`full_plan`, `aggregated_plan`). After each job it hands freed memory back to the system
(malloc_trim) and reports its RSS with the reply. `SolverWorker`, in the control process:
  * starts the child ahead of the first solve, and again after it is retired, so a solve rarely waits for imports;
  * retires it after `max_solves` jobs or once its RSS after a job passes `max_rss_bytes` (a slow native leak or
    fragmentation then costs one restart, never the gateway);
  * kills it when a job overruns its deadline (counted from when the child is ready, so a slow import on a small
    gateway is not mistaken for an overrun), and raises TimeoutError;
  * raises WorkerDied when the child dies during a job (the OOM killer, a segfault in native code), and starts a
    fresh one for the next job;
  * stops it within a second on `aclose()`; the child also dies with the control process (PR_SET_PDEATHSIG on
    Linux, else at the next read on its closed socket).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import traceback
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from agent.dispatch.inputs import PlanInputs
from agent.dispatch.plan import Plan, PlanError

log = structlog.get_logger("agent.dispatch")

READY_TIMEOUT_S = 120.0  # interpreter start and the solver imports; seconds on a small ARM gateway
STOP_GRACE_S = 0.5  # a stopped idle child exits at once; past this it is killed
_HEADER = struct.Struct("!Q")
SOLVER_MODULES = ("agent.dispatch.planner", "agent.dispatch.aggregate")  # what the jobs import (cvxpy, highspy)


# -- jobs: run in the child ------------------------------------------------------------------------------------


def full_plan(inputs: PlanInputs, budget_s: float) -> Plan:
    """The full per-asset LP (agent.dispatch.planner). Imported here: the control process must not load cvxpy."""
    from agent.dispatch.planner import solve

    return solve(inputs, budget_s)


def aggregated_plan(inputs: PlanInputs, budget_s: float) -> Plan:
    """Large EV fleets through virtual batteries (agent.dispatch.aggregate)."""
    from agent.dispatch.aggregate import solve_aggregated

    return solve_aggregated(inputs, time_limit_s=budget_s)


# -- the child's side ------------------------------------------------------------------------------------------


def serve(fd: int, parent_pid: int) -> None:
    """The child's loop: read a job, run it, reply (status, value, rss bytes); exit on a stop frame or EOF."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the terminal's whole process group: the parent
    # stops this child itself, and a KeyboardInterrupt traceback here would only garble the console
    sock = socket.socket(fileno=fd)
    for module in SOLVER_MODULES:  # the solver stack, before saying ready
        importlib.import_module(module)

    _release_memory()
    _send(sock, pickle.dumps(("ready", os.getpid(), rss_bytes()), pickle.HIGHEST_PROTOCOL))
    while True:
        try:
            frame = _recv(sock)
        except (EOFError, OSError):
            break  # the control process is gone
        if not frame:
            break  # stop
        try:
            fn, args = pickle.loads(frame)
            reply: tuple[str, Any] = ("ok", fn(*args))
        except PlanError as exc:
            reply = ("plan_error", str(exc))
        except Exception as exc:  # reported to the control process as a crash; this child retires after it
            reply = ("error", f"{exc!r}\n{traceback.format_exc()}")
        try:
            data = pickle.dumps(reply, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            data = pickle.dumps(("error", f"reply not picklable: {exc!r}"), pickle.HIGHEST_PROTOCOL)
        del reply
        _release_memory()
        try:
            _send(sock, _HEADER.pack(rss_bytes() or 0) + data)
        except OSError:
            break
    # at once, without the interpreter's teardown (nothing to flush): the socket closes as the process ends, so the
    # control process sees EOF when this process has exited (SolverWorker.aclose)
    os._exit(0)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this child when the control process dies, even by kill -9 (PR_SET_PDEATHSIG).

    Strictly, when the thread that started it ends: SolverWorker is driven from the event loop's thread, which lives
    as long as the agent. Elsewhere the child ends at its next read of the closed socket."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


def _release_memory() -> None:
    """Hand the solve's freed native memory back to the system: glibc keeps a freed peak in its heap otherwise.

    100 EVs x 96 steps: the child idles at ~175 MB instead of ~300 MB, for ~13 ms here and the page faults of taking
    the memory again in the next solve (~0.15 s of a ~1 s solve). No gc.collect(): a solve leaves no cycles that
    hold memory (same RSS with and without it) and it took 75 ms."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size of a process (this one by default) from /proc, or None where there is no /proc."""
    try:
        with open(f"/proc/{pid or 'self'}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv(sock: socket.socket) -> bytes:
    (size,) = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
    return _recv_exactly(sock, size)


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            raise EOFError("solver socket closed")
        got += n
    return bytes(buf)


# -- the control process's side --------------------------------------------------------------------------------


class WorkerDied(RuntimeError):
    """The solver process died during a job (killed, e.g. by the OOM killer, or crashed in native code)."""


class WorkerError(RuntimeError):
    """A job raised an unexpected exception in the solver process; `args[0]` carries its traceback."""


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not exit"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
        return f"killed by signal {-code}"
    return f"exited with status {code}"


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL and reap (finalizer, and the last resort of every stop)."""
    if process.poll() is None:
        with contextlib.suppress(OSError):
            process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1.0)


class SolverWorker:
    """One solver child process at a time, driven from the event loop without blocking it (see the module doc)."""

    def __init__(self, max_solves: int, max_rss_bytes: int | None) -> None:
        """Retire the child after `max_solves` jobs, or once its RSS after a job passes `max_rss_bytes` (None: never);
        `[dispatch] solver_recycle_solves` / `solver_recycle_rss_mb` say why the defaults are what they are."""
        self.max_solves = max_solves
        self.max_rss_bytes = max_rss_bytes
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.ready = False
        self.jobs = 0  # jobs of the current child
        self.started = 0  # children started so far
        self.rss_bytes: int | None = None  # the child's RSS after its last job (or when it became ready)
        self._busy = False
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id, None when there is none."""
        return self.process.pid if self.process is not None and self.process.poll() is None else None

    def start(self) -> None:
        """Start a child unless one is running; returns at once (it imports the solver stack in the background)."""
        if self.process is not None:
            return
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = str(Path(__file__).resolve().parents[2])  # where `agent` lives, installed or not
        code = f"import sys; sys.path.insert(0, {root!r}); from agent.dispatch.worker import serve; "
        code += f"serve({child.fileno()}, {os.getpid()})"
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,  # HiGHS' banner; errors come back over the socket, Python's on stderr
            )
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.ready = False
        self.jobs = 0
        self.started += 1
        self._finalizer = weakref.finalize(self, _kill, self.process)  # also at interpreter exit: no orphans
        log.debug("dispatch.worker_started", pid=self.process.pid)

    async def call(self, fn: Callable[..., Any], *args: Any, deadline_s: float) -> Any:
        """Run `fn(*args)` in the child and return its result; at most `deadline_s` once the child is ready.

        Raises PlanError (the job's), TimeoutError (an overrun: the child is killed), WorkerDied, WorkerError (any
        other exception in the job: the child is replaced), and whatever pickling `fn` and `args` raises.
        """
        if self._busy:
            raise RuntimeError("the solver worker runs one job at a time")
        request = pickle.dumps((fn, args), pickle.HIGHEST_PROTOCOL)
        self._busy = True
        done = False
        try:
            if self.process is not None and self.process.poll() is not None:  # died while idle
                log.warning("dispatch.worker_lost", pid=self.process.pid, exit=_describe_exit(self.process.poll()))
                self._forget()
            self.start()
            await self._until_ready()
            try:
                async with asyncio.timeout(deadline_s):
                    await self._write(request, "during the solve")
                    reply = await self._read("during the solve")
            except TimeoutError:
                pid = self.pid
                self.kill()
                raise TimeoutError(f"solver overran its {deadline_s:.1f} s deadline; worker {pid} killed") from None
            done = True
        finally:
            self._busy = False
            if not done:
                self.kill()  # cancelled or failed mid-job: what the child is doing is unknown
        self.jobs += 1
        (self.rss_bytes,) = _HEADER.unpack(reply[: _HEADER.size])
        status, value = pickle.loads(reply[_HEADER.size :])
        if status == "error":
            await self._replace("job raised")
            raise WorkerError(value)
        if self.jobs >= self.max_solves:
            await self._replace(f"{self.jobs} solves")
        elif self.max_rss_bytes is not None and self.rss_bytes > self.max_rss_bytes:
            await self._replace(f"RSS {self.rss_bytes / 2**20:.0f} MB over {self.max_rss_bytes / 2**20:.0f} MB")
        if status == "plan_error":
            raise PlanError(value)
        return value

    async def _until_ready(self) -> None:
        if self.ready:
            return
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                frame = await self._read("before it was ready")
        except TimeoutError:
            raise TimeoutError(f"solver worker not ready within {READY_TIMEOUT_S:.0f} s") from None
        _, pid, rss = pickle.loads(frame)
        self.ready, self.rss_bytes = True, rss
        log.debug("dispatch.worker_ready", pid=pid, rss_mb=round((rss or 0) / 2**20, 1))

    async def _replace(self, reason: str) -> None:
        """Retire the child and start the next one at once, so that it has imported before the next solve."""
        log.info("dispatch.worker_recycled", reason=reason, pid=self.pid, solves=self.jobs,
                 rss_mb=round((self.rss_bytes or 0) / 2**20, 1))  # fmt: skip
        await self.aclose()
        self.start()

    async def _write(self, data: bytes, when: str) -> None:
        assert self.sock is not None
        try:
            await asyncio.get_running_loop().sock_sendall(self.sock, _HEADER.pack(len(data)) + data)
        except OSError as exc:  # the child's end is closed: it died
            raise self._died(when) from exc

    async def _read(self, when: str) -> bytes:
        sock = self.sock
        assert sock is not None
        loop = asyncio.get_running_loop()

        async def exactly(size: int) -> bytes:
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            while got < size:
                n = await loop.sock_recv_into(sock, view[got:])
                if n == 0:
                    raise self._died(when)
                got += n
            return bytes(buf)

        try:
            (size,) = _HEADER.unpack(await exactly(_HEADER.size))
            return await exactly(size)
        except OSError as exc:  # reset by a dying child, or closed here by a concurrent aclose()
            raise self._died(when) from exc

    def _died(self, when: str) -> WorkerDied:
        process = self.process
        if process is None:  # stopped by aclose() or kill() meanwhile
            return WorkerDied(f"solver worker stopped {when}")
        code = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            code = process.wait(timeout=1.0)  # its socket closed as it exited: reaping takes no time
        self._forget()
        return WorkerDied(f"solver worker {process.pid} {_describe_exit(code)} {when}")

    async def aclose(self) -> None:
        """Stop the child within ~STOP_GRACE_S: an idle, ready one is asked to exit, any other is killed."""
        process, sock = self.process, self.sock
        if process is None:
            return
        if self._busy or not self.ready or sock is None:
            self.kill()
            return
        loop = asyncio.get_running_loop()
        with contextlib.suppress(OSError, TimeoutError, subprocess.TimeoutExpired):
            sock.send(_HEADER.pack(0))  # the stop frame: 8 bytes always fit the idle socket's buffer
            async with asyncio.timeout(STOP_GRACE_S):
                await loop.sock_recv(sock, 1)  # b"" once the child has exited and its end is closed
            process.wait(timeout=0.1)  # exited already (its socket closed as it ended): this only reaps it
        self.kill()  # reaps it, or kills it past the grace

    def kill(self) -> None:
        """SIGKILL the child now and reap it (synchronous: overruns, shutdown without a loop, finalizers)."""
        if self.process is not None:
            _kill(self.process)
        self._forget()

    def _forget(self) -> None:
        if self.sock is not None:
            self.sock.close()
        if self._finalizer is not None:
            self._finalizer()  # kills and reaps it if it still runs
        self.process, self.sock, self._finalizer, self.ready = None, None, None, False
