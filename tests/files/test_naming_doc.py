"""docs/naming.md's families x hosts table says what lbw.domain.hosts decides, cell by cell."""

from __future__ import annotations

import re
from pathlib import Path

from lbw.domain.hosts import hosts_for
from lbw.files.families import FAMILIES, describe, normalise

DOC = Path(__file__).resolve().parents[2] / "docs" / "naming.md"
ROW = re.compile(r"^\| (\w+) \| `([^`]+)` \| (\w+) \| (loads|-|n/a) \| (loads|-) \| (loads|-) \| (loads|-|n/a) \|$")


def _rows() -> list[tuple[str, ...]]:
    return [match.groups() for line in DOC.read_text(encoding="utf-8").splitlines() if (match := ROW.match(line))]


def test_the_table_has_every_family_and_architecture() -> None:
    rows = _rows()
    assert len(rows) == 30
    assert {row[0] for row in rows} == set(FAMILIES)
    assert {row[2] for row in rows} == {"flux", "sdxl", "sd1"}


def test_every_cell_is_what_lbw_decides() -> None:
    for family, name, architecture, *cells in _rows():
        assert normalise(name).family == family, name
        loaded_by = describe(name, architecture, "lora").loaded_by
        for host, cell in zip(("a1111", "forge", "comfyui", "diffusers"), cells, strict=True):
            if host not in hosts_for(architecture):
                assert cell == "n/a", (name, host)
            else:
                assert cell == ("loads" if host in loaded_by else "-"), (name, host, loaded_by)
