"""What the ``stackshift`` command loads before it knows what it was asked.

Every command pays for its start-up, so the HTTP client (httpx and the server's
pydantic schemas behind ``stackshift.remote``, a tenth of a second) is loaded
only by the commands that talk to a server.
"""

from __future__ import annotations

import subprocess
import sys


def _loaded_after(code: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sys.modules))"],
        capture_output=True, text=True, timeout=60, check=True)
    return set(done.stdout.split())


def test_the_command_starts_without_the_http_client() -> None:
    loaded = _loaded_after("import stackshift.cli.main")
    assert "stackshift.cli.main" in loaded
    assert not {"httpx", "stackshift.remote", "stackshift.server.schemas"} & loaded


def test_a_client_of_a_server_loads_it() -> None:
    loaded = _loaded_after(
        "from stackshift import StackShift\n"
        "StackShift(base_url='http://127.0.0.1:9', api_key='k').close()")
    assert {"httpx", "stackshift.remote"} <= loaded
