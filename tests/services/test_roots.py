"""The path guard of ``lbw web``: only the workspace, LoRA and model folders, checked after resolving links."""

from __future__ import annotations

import os

import pytest

from lbw.services.roots import PathRefused, Roots


@pytest.fixture
def tree(tmp_path):
    ws, loras, models, outside = (tmp_path / n for n in ("ws", "loras", "models", "outside"))
    for folder in (ws, loras, models, outside):
        folder.mkdir()
    (loras / "sub").mkdir()
    (loras / "face.safetensors").write_bytes(b"x")
    (loras / "sub" / "style.safetensors").write_bytes(b"y")
    (outside / "secret.safetensors").write_bytes(b"s")
    (loras / "link-out.safetensors").symlink_to(outside / "secret.safetensors")
    (loras / "dir-out").symlink_to(outside, target_is_directory=True)
    (loras / "link-in.safetensors").symlink_to(loras / "face.safetensors")
    (models / "tiny").mkdir()
    return Roots(workspace=ws, loras=(loras,), models=(models,)), tmp_path


def test_paths_inside_are_resolved(tree):
    roots, base = tree
    assert roots.check("face.safetensors", kind="lora") == base / "loras" / "face.safetensors"
    assert roots.check(str(base / "loras" / "sub" / "style.safetensors"), kind="lora").name == "style.safetensors"
    assert roots.check("link-in.safetensors", kind="lora") == base / "loras" / "face.safetensors"
    assert roots.check("tiny", kind="model", must_exist=True) == base / "models" / "tiny"
    assert roots.check("out/new.safetensors", kind="workspace") == base / "ws" / "out" / "new.safetensors"
    assert roots.check(str(base / "models" / "tiny")) == base / "models" / "tiny"  # any folder for kind=None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../outside/secret.safetensors", "'..' is not allowed"),
        ("sub/../../outside/secret.safetensors", "'..' is not allowed"),
        ("sub/..", "'..' is not allowed"),
        ("..\\outside\\secret.safetensors", "'..' is not allowed"),
        ("/etc/passwd", "outside the lora folders"),
        ("link-out.safetensors", "outside the lora folders"),
        ("dir-out/secret.safetensors", "outside the lora folders"),
        ("face\x00.safetensors", "control characters"),
        ("face\n.safetensors", "control characters"),
        ("", "empty"),
        ("~/x", "outside the lora folders"),
        ("a" * 5000, "characters"),
    ],
)
def test_escapes_are_refused(tree, path, reason):
    roots, _ = tree
    with pytest.raises(PathRefused, match=reason):
        roots.check(path, kind="lora")


def test_absolute_path_of_another_kind_is_refused(tree):
    roots, base = tree
    with pytest.raises(PathRefused, match="outside the model folders"):
        roots.check(str(base / "loras" / "face.safetensors"), kind="model")
    with pytest.raises(PathRefused, match="outside the folders this server may use"):
        roots.check(str(base / "outside" / "secret.safetensors"))
    with pytest.raises(PathRefused, match="not found"):
        roots.check("missing.safetensors", kind="lora", must_exist=True)
    assert not roots.contains("/etc/passwd") and roots.contains("face.safetensors", "lora")


def test_symlink_loop_and_no_folder(tree, tmp_path):
    roots, base = tree
    loop = base / "loras" / "loop"
    os.symlink(loop, loop)
    with pytest.raises(PathRefused):
        roots.check("loop/x", kind="lora")
    bare = Roots(workspace=tmp_path / "ws")
    with pytest.raises(PathRefused, match="without a lora folder"):
        bare.check("face.safetensors", kind="lora")


def test_walk_lists_only_files_inside(tree):
    roots, _ = tree
    names = [roots.relative(p) for p in roots.walk("lora", (".safetensors",))]
    # the link that stays inside is its target, listed once; links leaving the folder are skipped
    assert names == ["face.safetensors", "sub/style.safetensors"]
    assert roots.allowed_paths()[0].endswith("ws")
