"""The workbench's services without a browser: LoRA list and shares inside the folders, settings checked against
them, bake + verify + metadata of a project's sheet, the grid of an iteration in Japanese."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lbw.errors import LbwError, ProjectError
from lbw.files.fixtures import write_fixture
from lbw.services.projects import ProjectSettings, create_project, get_project, open_workspace, replace_sheet
from lbw.services.roots import PathRefused, Roots
from lbw.services.workbench import (
    MetaForm,
    bake_project,
    baked_files,
    block_shares,
    default_bake_name,
    factor_rows,
    guard_settings,
    lora_catalogue,
    parse_seeds,
    write_metadata,
)

SELECT = r"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_[qk]|mid_block_attentions_0_proj_out" \
         r"|up_blocks_3_attentions_2_proj_out|encoder_layers_0_self_attn_q"


@pytest.fixture
def folders(tmp_path):
    ws, loras, models, outside = (tmp_path / n for n in ("ws", "loras", "models", "outside"))
    for folder in (loras, models, outside):
        folder.mkdir()
    write_fixture("sd15", loras / "face.safetensors", rank=4, alpha=2, dtype="fp32", seed=1, select=SELECT)
    (loras / "styles").mkdir()
    write_fixture("sd15", loras / "styles" / "ink.safetensors", rank=8, alpha=8, dtype="fp16", seed=2, select=SELECT)
    (loras / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    write_fixture("sd15", outside / "secret.safetensors", rank=4, alpha=2, dtype="fp32", seed=3, select=SELECT)
    (loras / "leak.safetensors").symlink_to(outside / "secret.safetensors")
    (models / "tiny").mkdir()
    (models / "tiny" / "model_index.json").write_text("{}")
    roots = Roots(workspace=ws, loras=(loras,), models=(models,))
    return roots, tmp_path


def test_catalogue_lists_what_inspect_says_inside_the_folders(folders):
    roots, _ = folders
    entries = {e.shown: e for e in lora_catalogue(roots)}
    assert sorted(entries) == ["broken.safetensors", "face.safetensors", "styles/ink.safetensors"]
    face = entries["face.safetensors"]
    # attention modules only: the 17-block layout
    assert (face.architecture, face.layout, face.rank, face.error) == ("sd1", "SD17", "4", None)
    assert entries["styles/ink.safetensors"].rank == "8"
    assert entries["broken.safetensors"].error  # listed with why lbw refuses it
    shares = dict(block_shares("face.safetensors", roots))
    assert abs(sum(shares.values()) - 100.0) < 1e-6 and shares["BASE"] > 0
    with pytest.raises(PathRefused, match="outside the lora folders"):
        block_shares("leak.safetensors", roots)


def test_settings_paths_are_checked(folders):
    roots, tmp = folders
    checked = guard_settings(roots, {"lora": "face.safetensors", "model": "tiny", "backend": "diffusers"})
    assert checked["lora"] == str(tmp / "loras" / "face.safetensors") and checked["model"] == str(tmp / "models"
                                                                                                   / "tiny")
    for bad in ("../outside/secret.safetensors", str(tmp / "outside" / "secret.safetensors"), "leak.safetensors",
                "missing.safetensors"):
        with pytest.raises(PathRefused):
            guard_settings(roots, {"lora": bad, "backend": "diffusers"})
    # a server's names stay names; a name that is a local path elsewhere is still refused
    assert guard_settings(roots, {"lora": "gobuhime-v2", "model": "sd15 [abc]", "backend": "a1111"})["lora"] == \
        "gobuhime-v2"
    for bad in ("/etc/passwd", "../../x", "~/.ssh/id_rsa"):
        with pytest.raises(PathRefused):
            guard_settings(roots, {"lora": bad, "backend": "a1111"})
    with pytest.raises(PathRefused):
        guard_settings(roots, {"other_loras": [{"path": "/etc/passwd", "strength": 1}], "backend": "comfyui"})
    assert parse_seeds("1, 2;3") == (1, 2, 3)
    for bad in ("", "a", "1.5", "9" * 13):
        with pytest.raises(ProjectError):
            parse_seeds(bad)


def test_bake_verify_and_metadata_of_a_project(folders):
    roots, tmp = folders
    store = open_workspace(roots.workspace)
    settings = ProjectSettings(lora=str(tmp / "loras" / "face.safetensors"), prompt="1girl", seeds=(1,))
    view = create_project(store, "ゴブ姫", settings)
    sheet = view.sheet.set_values({"IN01": 0.0, "OUT11": 0.5, "M00": 0.25}).fix(view.sheet.layout.ids)
    view = replace_sheet(store, "ゴブ姫", sheet, expected_version=view.version)
    rows = {row[0]: row for row in factor_rows(store, "ゴブ姫", roots)}
    assert rows["M00"][3] == "0.25" and rows["OUT11"][3] == "0.5"
    for bad in ("../x.safetensors", str(tmp / "outside" / "x.safetensors"), "baked/x.txt"):
        with pytest.raises(PathRefused):
            bake_project(store, "ゴブ姫", roots, bad)
    dest = default_bake_name(view)
    assert dest.startswith("baked/") and dest.endswith(".safetensors")
    done = bake_project(store, "ゴブ姫", roots, dest)
    assert done.verification.passed and done.verification.max_error < 1e-5
    assert done.shown == dest and baked_files(roots) == [dest]
    with pytest.raises(LbwError, match="exists"):
        bake_project(store, "ゴブ姫", roots, dest)  # never overwritten without force
    # a cover from an image in the workspace (a rendered cell in the real page)
    from PIL import Image

    cell = roots.workspace / "projects" / "cell.png"
    cell.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(cell)
    form = MetaForm(display_name="ゴブ姫", author="me", keywords="gobuhime", cover="projects/cell.png")
    result = write_metadata(store, "ゴブ姫", roots, dest, form)
    from lbw.services.meta import show_meta

    meta = show_meta(roots.workspace / dest)
    assert meta.metadata["ssmd_display_name"] == "ゴブ姫" and meta.metadata["ssmd_keywords"] == "gobuhime"
    assert meta.metadata["lbw_block_weights"].endswith(get_project(store, "ゴブ姫").sheet.weight_line().split(":")[1])
    assert meta.hashes["stored"] == meta.hashes["computed"] == result.hashes["sshs_model_hash"]
    sidecar = json.loads((roots.workspace / dest).with_suffix(".json").read_text(encoding="utf-8"))
    assert sidecar["activation text"] == "gobuhime"
    # metadata is written only into the workbench's own bakes, covers only from the workspace
    for file, cover in (("../loras/face.safetensors", ""), (str(tmp / "loras" / "face.safetensors"), ""),
                        (dest, str(tmp / "outside" / "secret.safetensors")), (dest, "../outside/x.png")):
        with pytest.raises(PathRefused):
            write_metadata(store, "ゴブ姫", roots, file, replace(form, cover=cover))
    with pytest.raises(ProjectError, match="nothing to write"):
        write_metadata(store, "ゴブ姫", roots, dest, MetaForm(weights=False, sidecar=False))
    assert Path(tmp / "loras" / "face.safetensors").is_file()
