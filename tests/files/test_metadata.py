"""Metadata helpers: groups, AddNet fields, block weights, cover images, modelspec thumbnail, sidecar."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image, PngImagePlugin

from lbw.errors import LbwError, WeightsError
from lbw.files.metadata import (
    block_weights_entries,
    check_weights_fit,
    cover_images_value,
    decode_cover,
    describe_image_value,
    group_metadata,
    image_data_url,
    rating_value,
    read_block_weights,
    read_sidecar,
    sd_version,
    sidecar_path,
    update_sidecar,
    write_sidecar,
)


def test_group_metadata_sorts_keys_into_every_group() -> None:
    groups = group_metadata({
        "ss_network_dim": "8", "ssmd_author": "me", "sshs_model_hash": "ab", "modelspec.title": "t",
        "lbw_block_weights": "1,1,1,1,1,1,1,1,1,1,1,1", "format": "pt", "ss_a": "1",
    })
    assert groups == {
        "training": {"ss_a": "1", "ss_network_dim": "8"},
        "user": {"ssmd_author": "me"},
        "modelspec": {"modelspec.title": "t"},
        "hashes": {"sshs_model_hash": "ab"},
        "lbw": {"lbw_block_weights": "1,1,1,1,1,1,1,1,1,1,1,1"},
        "other": {"format": "pt"},
    }


def test_rating_is_a_whole_number_from_0_to_10() -> None:
    assert [rating_value(v) for v in (0, "7", " 10 ")] == ["0", "7", "10"]
    for bad in (11, -1, "7.5", "x", ""):
        with pytest.raises(LbwError, match=r"ssmd_rating: rating must be a whole number from 0 to 10"):
            rating_value(bad)


def test_block_weights_entries_and_round_trip() -> None:
    entries = block_weights_entries("Gobuhime:1,1,1,1,0.50,1,1,1,1,1,1,1,1,1,1,1,1")
    assert entries == {"lbw_block_weights": "Gobuhime:1,1,1,1,0.5,1,1,1,1,1,1,1,1,1,1,1,1",
                       "lbw_block_layout": "SD17"}
    weights = read_block_weights(entries)
    assert weights is not None and weights["IN05"] == 0.5 and weights.name == "Gobuhime"
    assert read_block_weights({}) is None
    with pytest.raises(WeightsError, match=r"still hold R/U/X"):
        block_weights_entries("R:" + ",".join(["R"] * 12))
    with pytest.raises(WeightsError, match=r"--weights: found 5 values"):
        block_weights_entries("1,1,1,1,1")
    with pytest.raises(WeightsError, match=r"lbw_block_layout says XL12 but the weights have 17 values"):
        read_block_weights({**entries, "lbw_block_layout": "XL12"})


def test_weights_must_fit_the_base_model_named_in_metadata() -> None:
    check_weights_fit({"ss_base_model_version": "sdxl_base_v1-0"}, "XL20")
    check_weights_fit({}, "FLUX61")  # unknown base model: nothing to check against
    check_weights_fit({"modelspec.architecture": "stable-diffusion-v1/lora"}, "SD26")
    with pytest.raises(WeightsError, match=r"layout SD17 is for SD1/SD2; this file is SDXL: use 12 or 20"):
        check_weights_fit({"ss_base_model_version": "sdxl_base_v1-0"}, "SD17")
    with pytest.raises(WeightsError, match=r"layout XL12 is for SDXL; this file is FLUX: use 61 values"):
        check_weights_fit({"ss_base_model_version": "flux1"}, "XL12")


def png_with_text(path) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "1girl, gobuhime")
    Image.new("RGBA", (12, 18), (10, 20, 30, 255)).save(path, pnginfo=info)
    return path.read_bytes()


def test_png_cover_is_stored_byte_for_byte(tmp_path) -> None:
    original = png_with_text(tmp_path / "cover.png")
    value = cover_images_value(tmp_path / "cover.png")
    images = json.loads(value)
    assert len(images) == 1 and not images[0].startswith("data:")
    assert base64.b64decode(images[0]) == original == decode_cover(value)
    assert describe_image_value("ssmd_cover_images", value) == f"PNG 12x18, {len(original):,} bytes"


def test_jpeg_cover_is_converted_to_png(tmp_path) -> None:
    source = Image.linear_gradient("L").resize((32, 48)).convert("RGB")
    source.save(tmp_path / "cover.jpg", quality=90)
    png = decode_cover(cover_images_value(tmp_path / "cover.jpg"))
    with Image.open(io.BytesIO(png)) as converted, Image.open(tmp_path / "cover.jpg") as jpeg:
        assert converted.format == "PNG" and converted.size == (32, 48)
        assert converted.tobytes() == jpeg.convert("RGB").tobytes()  # lossless from the decoded JPEG
    Image.new("CMYK", (8, 8), (0, 50, 100, 0)).save(tmp_path / "cmyk.jpg")
    with Image.open(io.BytesIO(decode_cover(cover_images_value(tmp_path / "cmyk.jpg")))) as image:
        assert image.mode == "RGB"


def test_bad_images_and_cover_values_are_refused(tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(LbwError, match=r"notes.txt: not a readable image; expected PNG or JPEG"):
        cover_images_value(tmp_path / "notes.txt")
    Image.new("RGB", (4, 4)).save(tmp_path / "anim.gif")
    with pytest.raises(LbwError, match=r"anim.gif: is a GIF image; expected PNG or JPEG"):
        cover_images_value(tmp_path / "anim.gif")
    png = png_with_text(tmp_path / "cut.png")
    (tmp_path / "cut.png").write_bytes(png[:-20])
    with pytest.raises(LbwError, match=r"cut.png: damaged image \(Truncated File Read\)"):
        cover_images_value(tmp_path / "cut.png")
    with pytest.raises(LbwError, match=r"missing.png: cannot read image"):
        cover_images_value(tmp_path / "missing.png")
    with pytest.raises(LbwError, match=r"ssmd_cover_images: is not a JSON list"):
        decode_cover("iVBOR")
    with pytest.raises(LbwError, match=r"ssmd_cover_images: holds no image"):
        decode_cover("[]")
    png = png_with_text(tmp_path / "c.png")
    with_prefix = json.dumps(["data:image/png;base64," + base64.b64encode(png).decode()])
    assert decode_cover(with_prefix) == png  # readers accept a data: prefix


def test_thumbnail_data_url_keeps_the_format(tmp_path) -> None:
    png = png_with_text(tmp_path / "t.png")
    assert image_data_url(tmp_path / "t.png") == "data:image/png;base64," + base64.b64encode(png).decode()
    Image.new("RGB", (4, 4)).save(tmp_path / "t.jpg")
    url = image_data_url(tmp_path / "t.jpg")
    assert url.startswith("data:image/jpeg;base64,/9j/")
    assert describe_image_value("modelspec.thumbnail", url).startswith("JPEG 4x4, ")


def test_sd_version_follows_a1111() -> None:
    assert sd_version({"ss_base_model_version": "sdxl_base_v1-0"}) == "SDXL"
    assert sd_version({"ss_v2": "True", "ss_base_model_version": "sd_v2_v"}) == "SD2"
    assert sd_version({"ss_v2": "False"}) == "SD1"
    assert sd_version({}) == "Unknown"


def test_sidecar_update_write_and_read(tmp_path) -> None:
    assert sidecar_path(tmp_path / "style.v2.safetensors") == tmp_path / "style.v2.json"
    path = tmp_path / "style.json"
    assert read_sidecar(path) is None
    data = update_sidecar({"notes": "keep", "extra": 1}, {
        "activation text": "ゴブ姫", "preferred weight": "0.8", "sd version": "sdxl", "description": "d"})
    assert data == {"notes": "keep", "extra": 1, "activation text": "ゴブ姫", "preferred weight": 0.8,
                    "sd version": "SDXL", "description": "d"}
    write_sidecar(path, data)
    assert path.read_text(encoding="utf-8") == json.dumps(data, indent=4, ensure_ascii=False) + "\n"
    assert read_sidecar(path) == data
    with pytest.raises(LbwError, match=r"preferred weight must be a number, found 'heavy'"):
        update_sidecar(None, {"preferred weight": "heavy"})
    with pytest.raises(LbwError, match=r"sd version must be one of SD1, SD2, SDXL, SD3, Unknown, found 'SD4'"):
        update_sidecar(None, {"sd version": "SD4"})
    with pytest.raises(LbwError, match=r"unknown sidecar key 'weight'"):
        update_sidecar(None, {"weight": 1})
    path.write_text("[1, 2]")
    with pytest.raises(LbwError, match=r"style.json: sidecar must be a JSON object, found list"):
        read_sidecar(path)
    path.write_text("{oops")
    with pytest.raises(LbwError, match=r"style.json: sidecar is not valid JSON"):
        read_sidecar(path)
