"""The diagram in docs/state-machine.md draws exactly the transition table in code."""

from __future__ import annotations

import re
from pathlib import Path

from stackshift.engine.transitions import TRANSITIONS

DOC = Path(__file__).resolve().parents[2] / "docs" / "state-machine.md"


def test_diagram_matches_transition_table() -> None:
    diagram = DOC.read_text().split("```mermaid", 1)[1].split("```", 1)[0]
    drawn = {
        (a, b)
        for a, b in re.findall(r"^\s*(\w+) --> (\w+)", diagram, flags=re.MULTILINE)
    }
    in_code = {(a.value, b.value) for a, targets in TRANSITIONS.items() for b in targets}
    assert drawn == in_code
