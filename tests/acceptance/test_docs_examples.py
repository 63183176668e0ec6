"""The Python examples of README.md and docs/*.md run as written.

Each ```` ```python ```` block is a program: it runs in a subprocess of its
own, in an empty folder, on a new database (``STACKSHIFT_DATABASE_URL``: a
SQLite file, then a PostgreSQL schema), with the real engine and, where the
example starts one, a real worker. The only glue is what the text leaves to the
reader: the functions a ``# a, b: your own functions`` comment names are given
as plain stubs. A block passes when it exits 0 (its own ``assert`` lines hold)
and prints what its ``print(...)  # shown`` comments say.

```` ```python fragment ```` blocks continue code the page shows elsewhere; those
of the pages in ``FRAGMENT_SETUP`` run too, in page order in one process, after
that setup. ```` ```python app ```` blocks are served by
``tests/server/test_docs_apps.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from docblocks import ROOT, Block, python_blocks

TIMEOUT = 30  # seconds; each example takes about one

PROGRAMS = [b for b in python_blocks() if b.is_program]

# Pages whose fragments all work on the `app` of the guide's first example.
FRAGMENT_SETUP = {
    "docs/flow-control.md": "from stackshift import StackShift\napp = StackShift()\n",
}

# Runs the blocks given as (doc, line, code) in one namespace, as __main__, so
# that a traceback names the doc and its line.
RUNNER = textwrap.dedent('''
    import json, sys

    def stub(*args, **kwargs):
        """One of "your own functions": returns a record with the id it is given."""
        return {"id": args[0] if args else None}

    spec = json.load(sys.stdin)
    namespace = {"__name__": "__main__"}
    namespace.update({name: stub for name in spec["stubs"]})
    if spec["setup"]:
        exec(compile(spec["setup"], "<setup>", "exec"), namespace)
    for doc, line, code in spec["blocks"]:
        exec(compile("\\n" * (line - 1) + code, doc, "exec"), namespace)
''')


def run_blocks(tmp_path: Path, blocks: list[Block], *, stubs: list[str], setup: str = "",
               database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STACKSHIFT_")}
    env["STACKSHIFT_DATABASE_URL"] = database_url or f"sqlite:///{tmp_path}/stackshift.db"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    spec = {"stubs": stubs, "setup": setup,
            "blocks": [(b.page, b.line, b.code) for b in blocks]}
    try:
        return subprocess.run(
            [sys.executable, "-c", RUNNER], input=json.dumps(spec), cwd=tmp_path, env=env,
            capture_output=True, text=True, timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else exc.stderr
        pytest.fail(f"{blocks[0].where}: still running after {TIMEOUT}s (does anything "
                    f"execute its runs?)\n{stderr or ''}")


@pytest.mark.parametrize("block", PROGRAMS, ids=[b.where for b in PROGRAMS])
def test_example_runs_as_written(block: Block, db_url: str, tmp_path: Path) -> None:
    done = run_blocks(tmp_path, [block], stubs=block.own_functions(), database_url=db_url)
    if done.returncode != 0:
        pytest.fail(f"{block.where} failed:\n{done.stderr}")
    assert done.stdout.splitlines() == block.expected_output(), done.stderr


@pytest.mark.parametrize("doc", sorted(FRAGMENT_SETUP))
def test_fragments_run_after_their_setup(doc: str, db_url: str, tmp_path: Path) -> None:
    fragments = [b for b in python_blocks() if b.is_fragment and b.page == doc]
    assert fragments, f"{doc} has no fragments any more: drop it from FRAGMENT_SETUP"
    done = run_blocks(tmp_path, fragments, stubs=[], setup=FRAGMENT_SETUP[doc],
                      database_url=db_url)
    if done.returncode != 0:
        pytest.fail(f"{doc} failed:\n{done.stderr}")


def test_the_readme_and_the_guide_have_programs() -> None:
    """The examples users copy first are programs here, not fragments left unrun."""
    docs = [b.page for b in PROGRAMS]
    assert docs.count("README.md") == 1
    assert docs.count("docs/guide.md") == 6
    readme = next(b for b in PROGRAMS if b.page == "README.md")
    assert readme.expected_output() == ["completed", "completed"]


def test_the_remote_client_example_talks_to_the_server_the_page_starts(tmp_path: Path) -> None:
    """server.md's remote client builds as written (it sends no request until
    used) and names the address its remote workers use: the server speaks plain
    HTTP on that port, so an https:// there would fail the TLS handshake."""
    block = next(b for b in python_blocks()
                 if b.page == "docs/server.md" and "base_url=" in b.code)
    done = run_blocks(tmp_path, [block], stubs=[])
    if done.returncode != 0:
        pytest.fail(f"{block.where} failed:\n{done.stderr}")
    doc = (ROOT / "docs" / "server.md").read_text()
    worker_urls = set(re.findall(r"stackshift worker \S+ --url (\S+)", doc))
    client_urls = set(re.findall(r'base_url="([^"]+)"', block.code))
    assert worker_urls and client_urls == worker_urls, (client_urls, worker_urls)
