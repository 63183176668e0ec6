"""The OpenAPI document of the HTTP API, as committed in ``docs/openapi.json``.

``python -m stackshift.server.openapi docs/openapi.json`` rewrites the file; a
test fails when the committed copy differs from what the code serves.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any


def document() -> dict[str, Any]:
    """The document ``/openapi.json`` serves (built over a throw-away database)."""
    from ..clock import SystemClock
    from ..jobs import JobRegistry
    from ..service import Service
    from ..settings import Settings
    from ..store import open_store
    from .app import create_app

    with tempfile.TemporaryDirectory() as folder:
        store = open_store(f"sqlite:///{folder}/openapi.db")
        try:
            app = create_app(Service(store, SystemClock(), Settings(), JobRegistry()))
            return app.openapi()
        finally:
            store.close()


def render() -> str:
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if argv:
        Path(argv[0]).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
