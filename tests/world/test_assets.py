"""The shipped world weights: every file matches the manifest, the model loads, the LoRAs are kohya LoCon files."""

from __future__ import annotations

import pytest

from lbw.files.lora_file import LoraFile
from lbw.world import assets

# Visible in every test summary (not silent): the weights land with the first finished training (docs/world.md).
pytestmark = pytest.mark.skipif(not assets.shipped(), reason="the world's trained weights are not in this checkout "
                                "yet (lbw world train, then lbw world package)")


def test_shipped_files_match_the_manifest() -> None:
    assert assets.shipped()
    assert assets.check_manifest() == []
    manifest = assets.read_manifest()
    total = sum(entry["size"] for entry in manifest["files"].values())
    assert total <= 25 * 1024 * 1024
    for key in ("generator_version", "training", "seconds"):
        assert key in manifest


def test_a_changed_file_is_caught(tmp_path) -> None:
    import shutil

    copy = tmp_path / "weights"
    shutil.copytree(assets.weights_folder(), copy)
    target = copy / "loras" / "gobuhime.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    (copy / "stray.txt").write_text("x")
    problems = assets.check_manifest(copy)
    assert any("gobuhime.safetensors: sha256" in p for p in problems)
    assert any("stray.txt: not in the manifest" in p for p in problems)


def test_the_loras_carry_every_block_a_kohya_locon_has() -> None:
    """All 26 LBW blocks but IN00 (conv_in, which kohya's networks.lora never adapts); no unmapped module."""
    from lbw.domain.layouts import SD26

    for name in assets.LORAS:
        with LoraFile.open(assets.lora_path(name)) as lora:
            blocks = {module.block for module in lora.modules}
            assert blocks == set(SD26.ids) - {"IN00"}, name
            assert lora.metadata["ss_network_module"] == "networks.lora"
