"""Resolving a weights argument (preset, vector, sheet file) into per-module factors, and input specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from lbw.domain.layouts import FLUX61, SD26
from lbw.domain.weights import BlockWeights
from lbw.errors import LoraFileError, PresetError, WeightsError
from lbw.files.fixtures import write_fixture
from lbw.files.lora_file import LoraFile
from lbw.services.resolve import format_factor_table, load_weights, resolve_for_file
from lbw.services.sources import Defaults, open_source, parse_spec, split_specs

SELECT = r"conv_in|conv_out|down_blocks_0_resnets_0_conv1|down_blocks_1_attentions_0_proj_in|encoder_layers_0_mlp_fc1"


@pytest.fixture(scope="module")
def locon(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture("sd15_locon_tucker", tmp_path_factory.mktemp("r") / "locon.safetensors", rank=2,
                         dtype="fp32", select=SELECT)


def test_preset_vector_and_sheet(tmp_path: Path) -> None:
    assert load_weights("OUTALL").weights.format() == "OUTALL:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"
    assert load_weights("OUTALL").source == "preset OUTALL (built-in presets)"
    inline = load_weights("1,0.5,1,1,1,1,1,1,1,1,1,1")
    assert (inline.weights.layout.name, inline.source) == ("XL12", "inline vector")
    presets = tmp_path / "lbwpresets.txt"
    presets.write_text("OUTALL:0,0,0,0,0,0,0,0,0,0,0,0\nMine:1,2,3,4,5,6,7,8,9,10,11,12\n", encoding="utf-8")
    assert load_weights("OUTALL", presets_file=presets).weights.vector_text() == "0,0,0,0,0,0,0,0,0,0,0,0"
    assert load_weights("ALL", presets_file=presets).source == "preset ALL (built-in presets)"
    sheet = tmp_path / "face.toml"
    sheet.write_text('name = "Face"\nlayout = "12"\n[blocks]\n'
                     + "".join(f"{b} = {i}\n" for i, b in enumerate(
                         ["BASE", "IN04", "IN05", "IN07", "IN08", "MID", "OUT00", "OUT01", "OUT02", "OUT03",
                          "OUT04", "OUT05"])), encoding="utf-8")
    loaded = load_weights(str(sheet))
    assert loaded.weights.format() == "Face:0,1,2,3,4,5,6,7,8,9,10,11"
    assert loaded.source == f"sheet {sheet}"


def test_errors_never_fall_back_to_weight_one(tmp_path: Path) -> None:
    with pytest.raises(PresetError, match=r"unknown preset 'OUTAL' \(searched the built-in presets\); did you mean"):
        load_weights("OUTAL")
    with pytest.raises(WeightsError, match="sheet file not found"):
        load_weights(str(tmp_path / "missing.toml"))
    with pytest.raises(WeightsError, match="found 5 values"):
        load_weights("1,1,1,1,1")
    with pytest.raises(WeightsError, match="pass --seed N"):
        load_weights("R," + ",".join(["1"] * 11))
    seeded = load_weights("R,X,X+0.5," + ",".join(["1"] * 9), seed=3, x=0.25).weights.numbers()
    assert seeded[1:3] == (0.25, 0.75) and 0 <= seeded[0] < 1


def test_zero_fill_multipliers_and_unmapped(locon: Path) -> None:
    with LoraFile.open(locon) as lora:
        weights = load_weights("OUTALL").weights  # SD17: IN00 is not in it -> 0
        plan = resolve_for_file(weights, lora.modules, lora.architecture, te=0.5, unet=2.0)
        factors = {m.name: plan.factor(m) for m in lora.modules}
    assert factors == {
        "lora_te_text_model_encoder_layers_0_mlp_fc1": 0.5,  # BASE 1 x te
        "lora_unet_conv_in": 0.0,  # IN00: filled with 0
        "lora_unet_conv_out": 2.0,  # unmapped: 1 x unet
        "lora_unet_down_blocks_0_resnets_0_conv1": 0.0,  # IN01 = 0 in OUTALL
        "lora_unet_down_blocks_1_attentions_0_proj_in": 0.0,
    }
    rows = format_factor_table(plan)
    assert rows[0] == ("BASE", "1", "0.5", "0.5", "1", "")
    assert ("IN00", "0", "2", "0", "1", "not in vector: 0") in rows
    assert rows[-1] == ("unmapped", "1", "2", "2", "1", "LBW keeps ratio 1")
    assert plan.notes == ("1 blocks with modules are not in SD17 and get 0 (LBW's fill): IN00",)


def test_layout_mismatches(locon: Path, tmp_path: Path) -> None:
    with LoraFile.open(locon) as lora:
        with pytest.raises(WeightsError, match="61 values are for Flux only"):
            resolve_for_file(BlockWeights.filled(FLUX61, 1), lora.modules, lora.architecture)
        plan = resolve_for_file(load_weights("1,1,1,1,1,1,1,1,1,1,1,1").weights, lora.modules, lora.architecture)
        assert "XL12 is an SDXL layout" in plan.notes[0]
    flux = write_fixture("flux", tmp_path / "flux.safetensors", rank=1, dtype="fp32",
                         select="double_blocks_0_img_attn_proj")
    with LoraFile.open(flux) as lora, pytest.raises(WeightsError, match="Flux needs 61 values"):
        resolve_for_file(BlockWeights.filled(SD26, 1), lora.modules, lora.architecture)


def test_spec_rules(locon: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "a:b"
    folder.mkdir()
    colon = folder / "x.safetensors"
    colon.write_bytes(locon.read_bytes())
    spec = parse_spec(f"{colon}:0.5:Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")
    assert (spec.path, spec.strength, spec.weights) == (colon, 0.5, "Face:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1")
    assert parse_spec(f"{colon}::OUTALL").strength is None
    monkeypatch.chdir(locon.parent)
    bare = parse_spec("locon:0.25")  # SuperMerger-style bare name
    assert (bare.path, bare.strength, bare.weights) == (Path("locon.safetensors"), 0.25, None)
    listed = split_specs(["locon:1:ALL,locon:0.5:INS"])
    assert [(s.strength, s.weights) for s in listed] == [(1.0, "ALL"), (0.5, "INS")]
    single = split_specs(["locon:1:1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"])  # a vector, not a list
    assert [s.weights for s in single] == ["1,0,0,0,0,0,0,0,1,1,1,1,1,1,1,1,1"]
    with pytest.raises(LoraFileError, match="no such LoRA file"):
        parse_spec("nothere:1")
    with pytest.raises(WeightsError, match="strength 'x' is not a number"):
        parse_spec("locon:x")
    source = open_source(parse_spec("locon:0.5"), Defaults(te=9, unet=9))
    assert (source.plan.te, source.plan.unet, source.weights_source) == (0.5, 0.5, "no weights (all 1)")
    source.lora.close()
