"""Reading the code in the project's documentation: fenced blocks and inline code.

The doc tests use this to run the Python examples and to check every
``stackshift`` command line the docs show. A Python block is a program a user
can copy and run (fence ```` ```python ````), a module that builds an ASGI
application ``app`` (fence ```` ```python app ````: a test serves it with
uvicorn, giving it the addresses the page leaves as placeholders), or a
fragment that continues the page's other code (fence ```` ```python fragment
````); no other label is allowed, so a block cannot drop out of the tests
unnoticed. A program states what it prints as a comment on its ``print(...)``
lines (``print(run.status)  # completed``), and a ``# a, b: your own
functions`` comment names what it leaves to the reader.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<info>.*)$")
_OWN_FUNCTIONS = re.compile(r"^#\s*(?P<names>\w+(?:\s*,\s*\w+)*)\s*:\s*your own functions", re.M)
_EXPECTED = re.compile(r"^\s*print\(.*\)\s*#\s*(?P<shown>.+?)\s*$")
_SHELL_INFOS = {"", "bash", "console", "sh", "shell"}


@dataclass(frozen=True)
class Block:
    doc: Path
    line: int  # of the first line of code, 1-based
    info: str  # the fence's info string: "python", "python fragment", "bash", ...
    code: str  # dedented
    heading: str  # of the section the block is in ("" before the first heading)

    @property
    def page(self) -> str:
        return str(self.doc.relative_to(ROOT))

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def is_python(self) -> bool:
        return self.info.split()[:1] in (["python"], ["py"], ["python3"], ["pycon"])

    @property
    def is_program(self) -> bool:
        return self.info == "python"

    @property
    def is_fragment(self) -> bool:
        return self.info == "python fragment"

    @property
    def is_app(self) -> bool:
        return self.info == "python app"

    def compiled(self) -> object:
        """The block compiled with its doc's name and line numbers, for tracebacks."""
        return compile("\n" * (self.line - 1) + self.code, str(self.doc), "exec")

    def own_functions(self) -> list[str]:
        """Names a ``# a, b: your own functions`` comment leaves to the reader."""
        return [n.strip() for m in _OWN_FUNCTIONS.finditer(self.code)
                for n in m.group("names").split(",")]

    def expected_output(self) -> list[str]:
        """What the block says it prints: ``print(...)  # shown`` lines, in order."""
        return [m.group("shown") for line in self.code.splitlines()
                if (m := _EXPECTED.match(line))]


def blocks(doc: Path) -> list[Block]:
    found: list[Block] = []
    lines = doc.read_text(encoding="utf-8").splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            if lines[i].startswith("#"):
                heading = lines[i].lstrip("#").strip()
            i += 1
            continue
        indent = opening.group("indent")
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1:end]]
        code = textwrap.dedent("\n".join(body)) + "\n"
        found.append(Block(doc, i + 2, opening.group("info").strip(), code, heading))
        i = end + 1
    return found


def python_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc) if b.is_python]


def _inline_code(doc: Path) -> list[tuple[int, str]]:
    """Inline code spans outside fenced blocks, with the line of their paragraph
    (a span may be wrapped over two lines)."""
    spans: list[tuple[int, str]] = []
    paragraph: list[str] = []
    first = 0
    in_fence = False
    lines = doc.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate([*lines, ""], 1):
        fence = _FENCE.match(line) is not None
        if fence:
            in_fence = not in_fence
        if fence or in_fence or not line.strip():
            spans.extend((first, s) for s in re.findall(r"`([^`]+)`", " ".join(paragraph)))
            paragraph = []
            continue
        if not paragraph:
            first = number
        paragraph.append(line.strip())
    return spans


@dataclass(frozen=True)
class Command:
    where: str
    words: list[str]  # after "stackshift"


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unbalanced quote in prose
        return text.split("#", 1)[0].split()


def _commands_in(where: str, text: str) -> list[Command]:
    found: list[Command] = []
    for line in text.splitlines():
        for part in re.split(r";|&&", line):
            words = _split(part)
            starts = [i for i, w in enumerate(words)
                      if w == "stackshift" or w.endswith("bin/stackshift")]
            for n, start in enumerate(starts):
                stop = starts[n + 1] if n + 1 < len(starts) else len(words)
                if stop > start + 1:  # "stackshift" alone names the product, not a command
                    found.append(Command(where, words[start + 1:stop]))
    return found


def commands() -> list[Command]:
    """Every ``stackshift ...`` command line the docs show, in shell blocks or inline."""
    found: list[Command] = []
    for doc in DOCS:
        for block in blocks(doc):
            if block.info in _SHELL_INFOS:
                found.extend(_commands_in(block.where, block.code))
        for number, span in _inline_code(doc):
            found.extend(_commands_in(f"{doc.relative_to(ROOT)}:{number}", span))
    return found
