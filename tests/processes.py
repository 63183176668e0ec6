"""Starting and stopping the subprocesses tests start (workers, servers, applications)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable
from typing import Any


def stop_processes(procs: Iterable[subprocess.Popen[Any]], grace: float = 15.0) -> None:
    """SIGTERM every live process, wait up to ``grace`` seconds each, kill the rest;
    then close the pipes the test opened to them."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


def interruptible() -> None:
    """``preexec_fn`` of a child that a test stops with Ctrl-C: SIGINT's default,
    as in a terminal (a shell starts a background job, such as a CI run, with
    SIGINT ignored, which its children inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
