"""How `stackshift server` stops on Ctrl-C, as typed in a terminal."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from serverproc import free_port, wait_until_serving

from processes import interruptible


def test_ctrl_c_twice_in_quick_succession_stops_the_server_without_a_traceback(
        db_url: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "stackshift.server", "--database-url", db_url,
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        preexec_fn=interruptible)
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", process, lambda: process.communicate()[0])
        process.send_signal(signal.SIGINT)
        time.sleep(0.05)
        process.send_signal(signal.SIGINT)  # a force quit, in uvicorn's words
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert "Shutting down" in output, output
    assert "Traceback" not in output and "CancelledError" not in output, output
