"""The peers' virtual environment: ``bench/.peers-venv``, made and filled with pip.

None of the peers' code enters the project: their workload scripts run in
subprocesses of this environment's interpreter. matplotlib (for the chart) lives
here too, so it is no dependency of the project either.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.common import ROOT

VENV = ROOT / "bench" / ".peers-venv"
#: Pinned so that reruns compare the same peers.
REQUIREMENTS = [
    "dbos==3.4.0",
    "huey==3.5.4",
    "procrastinate==3.10.0",
    "psycopg[binary]==3.3.9",
    "matplotlib==3.11.2",
]
_MARKER = VENV / "bench-requirements.json"


def python() -> Path:
    return VENV / "bin" / "python"


def ready() -> bool:
    try:
        return python().exists() and json.loads(_MARKER.read_text()) == REQUIREMENTS
    except (OSError, ValueError):
        return False


def ensure(log: Path | None = None) -> None:
    """Create the environment and install the pinned peers unless already there."""
    if ready():
        return
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    if not python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True, stdout=out,
                       stderr=out)
    subprocess.run([str(python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    *REQUIREMENTS], check=True, stdout=out, stderr=out)
    _MARKER.write_text(json.dumps(REQUIREMENTS))


def versions() -> dict[str, str]:
    """Installed versions of the peers (read from their environment)."""
    code = ("import importlib.metadata as m, json;"
            "print(json.dumps({n: m.version(n) for n in"
            " ['dbos', 'huey', 'procrastinate', 'psycopg', 'SQLAlchemy']}))")
    out = subprocess.run([str(python()), "-c", code], check=True, capture_output=True,
                         text=True).stdout
    return dict(json.loads(out))
