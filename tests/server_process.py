"""Test support: a loopback port, and a server process started, waited for and stopped the same way everywhere.

Readiness is read from the server's own output (a line it prints once it listens), never guessed from a sleep;
the deadline only bounds a hang. The process gets its own process group so its workers die with it.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

__all__ = ["free_port", "running_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of output: the process exited


def _wait_for(proc: subprocess.Popen, lines: queue.Queue, markers: Sequence[str], deadline: float) -> list[str]:
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "server not ready in time:\n" + "\n".join(seen[-30:])
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        assert line is not None, f"server exited ({proc.poll()}) before listening:\n" + "\n".join(seen[-30:])
        seen.append(line.rstrip())
        if any(marker in line for marker in markers):
            return seen


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextmanager
def running_server(cmd: Sequence[str], *, cwd, env: dict, ready: Sequence[str],
                   deadline_s: float) -> Iterator[list[str]]:
    """Start `cmd` (stdout and stderr merged), wait until a line contains one of `ready`, yield the lines read so
    far; on exit stop the whole process group (SIGTERM, SIGKILL after 30 s)."""
    proc = subprocess.Popen(list(cmd), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
    try:
        yield _wait_for(proc, lines, ready, time.monotonic() + deadline_s)
    finally:
        _stop(proc)
