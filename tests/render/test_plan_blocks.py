"""Plans (JSON round trip, jobs, validation) and block lists."""

from __future__ import annotations

import json

import pytest

from lbw.domain.layouts import SD17, SD26
from lbw.errors import RenderError
from lbw.render.blocks import expand_to_full, format_value, parse_block_list, weight_of
from lbw.render.plan import Axis, Cell, EbaSpec, LoraSpec, Plan, Settings, load_plan, plan_to_json, save_plan


def _plan(**changes) -> Plan:
    base = dict(
        kind="sub", layout="SD17",
        cells=(Cell("Sub", (1.0,) * 17), Cell("SubIN01_0", (1.0, 0.0) + (1.0,) * 15, "IN01")),
        settings=Settings(prompt="1girl", seeds=(1, 2), steps=4, width=64, height=64),
        loras=(LoraSpec(path="/x/face.safetensors", name="face", strength=0.8),
               LoraSpec(name="style", tuned=False, weights=(1.0,) * 12)),
        model="/models/m", axis=Axis("strength", (0.5, 1.0)),
    )
    base.update(changes)
    return Plan(**base)


def test_jobs_cross_cells_seeds_and_axis():
    jobs = _plan().jobs()
    assert len(jobs) == 2 * 2 * 2
    assert [(j.axis_value, j.cell.label, j.seed) for j in jobs[:3]] == [
        (0.5, "Sub", 1), (0.5, "Sub", 2), (0.5, "SubIN01_0", 1)]


def test_json_round_trip(tmp_path):
    plan = _plan(eba=EbaSpec(0.25, 1.0, ("IN01", "M00"), 30, "white", True, "0,0,0.5,0.5", 8.0, 0.5), kind="eba")
    path = save_plan(plan, tmp_path / "plan.json")
    assert load_plan(path) == plan
    data = json.loads(path.read_text())
    assert data["lbw_plan"] == 1 and data["settings"]["seeds"] == [1, 2]
    assert plan_to_json(load_plan(path)) == path.read_text()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"kind": "grid"}, "unknown plan kind 'grid'"),
        ({"cells": ()}, "at least one cell"),
        ({"cells": (Cell("x", (1.0,) * 26),)}, "cell 'x' has 26 values; layout SD17 needs 17 (at position 0)"),
        ({"settings": Settings(width=60)}, "multiples of 8"),
        ({"settings": Settings(seeds=())}, "at least one seed"),
        ({"settings": Settings(clip_skip=0)}, "clip skip counts from 1"),
        ({"axis": Axis("sampler", ("Euler",))}, "unknown axis 'sampler'"),
        ({"loras": (LoraSpec(name="a"), LoraSpec(name="b"))}, "only one LoRA of a plan can be tuned"),
        ({"settings": Settings(sampler="Euler b")}, "unknown sampler 'Euler b'"),
        ({"eba": EbaSpec(threshold=-1)}, "the analyzer threshold must be >= 0, got -1"),
        ({"eba": EbaSpec(diff_color="red")}, "diff colour must be black or white, got 'red'"),
    ],
)
def test_invalid_plans(changes, message):
    with pytest.raises(RenderError) as error:
        _plan(**changes)
    assert message in str(error.value)


def test_load_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RenderError, match=r"bad\.json: invalid plan JSON"):
        load_plan(bad)
    bad.write_text('{"kind": "sub"}')
    with pytest.raises(RenderError, match='not an lbw plan'):
        load_plan(bad)
    bad.write_text('{"lbw_plan": 1, "kind": "sub", "layout": "SD17"}')
    with pytest.raises(RenderError, match="missing plan field 'cells'"):
        load_plan(bad)
    with pytest.raises(RenderError, match="plan file not found"):
        load_plan(tmp_path / "missing.json")


def test_block_lists():
    assert parse_block_list("IN01,IN04-IN05, MID") == ("IN01", "IN04", "IN05", "M00")
    assert parse_block_list("17ALL") == SD17.ids
    assert parse_block_list("26all") == SD26.ids
    assert parse_block_list("NOT BASE IN00-IN11") == ("M00", *SD26.ids[14:])
    with pytest.raises(RenderError, match="unknown block 'IN12'"):
        parse_block_list("IN01,IN12")
    with pytest.raises(RenderError, match="runs backwards"):
        parse_block_list("OUT01-IN01")


def test_fill_and_values():
    values = tuple(float(i) for i in range(17))
    full = expand_to_full("SD17", values)
    assert len(full) == 26 and full[SD26.index("IN00")] == 0.0 and full[SD26.index("OUT11")] == 16.0
    assert weight_of("SD17", values, "IN03") == 0.0 and weight_of("SD17", values, "IN04") == 3.0
    assert [format_value(v) for v in (1.0, 0.5, -0.25, 0.1 + 0.2, 2)] == ["1", "0.5", "-0.25", "0.3", "2"]
