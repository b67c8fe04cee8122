"""A server process that a program starts, waits for and stops: ``running_server(command, port)``.

For the programs that drive ``detr serve`` from outside (the load benchmark, the browser tests, the
docs' screenshot script): start the command, poll ``GET /healthz`` on the loopback port until it
answers 200, hand over the process, and stop it afterwards (SIGTERM, then SIGKILL after a grace
period). Only the standard library, so it works without the serve extra's client packages.
"""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

STARTUP_TIMEOUT_S = 180.0  # loading a model on a busy 2-core machine can take minutes
POLL_INTERVAL_S = 0.2
STOP_GRACE_S = 20.0
LOG_TAIL_CHARS = 2000


class ServerStartError(RuntimeError):
    """The server exited or did not answer ``/healthz`` in time; the message ends with the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _log_tail(log: IO[str] | None) -> str:
    name = getattr(log, "name", None)
    if not isinstance(name, str) or not Path(name).is_file():
        return ""
    log.flush()
    return Path(name).read_text(errors="replace")[-LOG_TAIL_CHARS:]


def stop(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM ``process``, SIGKILL it when it has not ended after ``grace_s`` seconds."""
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextmanager
def running_server(
    command: Sequence[str],
    port: int,
    *,
    log: IO[str] | None = None,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[subprocess.Popen]:
    """Run ``command`` (a server listening on 127.0.0.1:``port``) while the block runs; yields its process.

    ``log``: a text file for its stdout and stderr (discarded without). Raises ``ServerStartError`` when the
    process exits, or ``/healthz`` does not answer 200 within ``startup_timeout_s`` seconds.
    """
    output = log if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(list(command), cwd=cwd, env=None if env is None else dict(env), stdout=output,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(port):
            if process.poll() is not None:
                raise ServerStartError(f"the server exited with {process.returncode}: {_log_tail(log)}")
            if time.monotonic() > deadline:
                raise ServerStartError(f"the server did not answer /healthz within {startup_timeout_s:.0f} s: "
                                       f"{_log_tail(log)}")
            time.sleep(POLL_INTERVAL_S)
        yield process
    finally:
        if process.poll() is None:
            stop(process)
