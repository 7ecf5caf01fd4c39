"""``lbw bake``, ``lbw merge``, ``lbw verify`` in-process: output, exit codes (0 ok, 1 failed verify, 2 errors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lbw.files.fixtures import write_fixture
from lbw.interfaces.cli.app import run

SELECT = (r"down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q|down_blocks_0_attentions_1_proj_in"
          r"|mid_block_attentions_0_proj_out|encoder_layers_0_self_attn_q")
VECTOR = "Face:1,0.5,-0.5,1,1,1.75,1,0,1,1,1,1,1,1,1,1,2"


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fixture("sd15", tmp_path_factory.mktemp("cli") / "face.safetensors", rank=4, alpha=2,
                         dtype="fp16", select=SELECT)


def test_bake_prints_factors_then_verify_passes(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "baked.safetensors"
    code = run(["bake", str(src), "-w", VECTOR, "--te", "0.5", "-o", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "face.safetensors: sd1, 4 modules; weights from inline vector" in text
    assert f"resolved factors of SD17 {VECTOR} (te 0.5, unet 1):" in text
    assert "│ BASE  │     1 │          0.5 │      0.5 │       1 │" in text
    assert "│ IN02  │  -0.5 │            1 │     -0.5 │       1 │" in text
    assert "│ M00   │     0 │            1 │        0 │       1 │" in text
    assert "3 of 4 modules, 1 removed at weight 0" in text
    code = run(["verify", str(out), "--against", str(src), "-w", VECTOR, "--te", "0.5"])
    text = capsys.readouterr().out
    assert code == 0 and "PASS: max relative error" in text and "tolerance 0.002" in text


def test_verify_failure_exits_1_with_json(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "baked.safetensors"
    assert run(["bake", str(src), "-w", VECTOR, "-o", str(out)]) == 0
    capsys.readouterr()
    code = run(["verify", str(out), "-a", f"{src}:1:ALL", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 1
    assert report["passed"] is False and report["tolerance"] == 0.002
    assert report["blocks"]["IN02"]["max_error"] == pytest.approx(1.5, rel=1e-2)
    assert {f["block"] for f in report["failures"]} == {"IN01", "IN02", "M00"}


def test_user_errors_exit_2(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["bake", str(src), "-w", "NOPE", "-o", str(tmp_path / "o.safetensors")]) == 2
    assert "lbw: error: unknown preset 'NOPE' (searched the built-in presets); did you mean NONE?" in \
        capsys.readouterr().err
    assert run(["bake", str(src), "-w", "ALL", "-o", str(src), "--force"]) == 2
    assert "never overwrites its input" in capsys.readouterr().err
    assert run(["bake", str(src), "-w", "ALL", "-o", str(tmp_path / "o.safetensors"), "--dora", "maybe"]) == 2
    assert run(["merge", "missing.safetensors:1", "-o", str(tmp_path / "m.safetensors")]) == 2
    assert "no such LoRA file" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_merge_supermerger_form_with_rank(src: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(src.parent)
    out = tmp_path / "m.safetensors"
    code = run(["merge", "face:1:ALL,face:0.5:OUTALL", "-o", str(out), "--rank", "2"])
    text = capsys.readouterr().out
    assert code == 0
    assert "face.safetensors: sd1, 4 modules, strength 0.5, weights from preset OUTALL (built-in presets)" in text
    assert "SVD to rank ≤ 2" in text and "overall" in text
    code = run(["verify", str(out), "-a", "face:1:ALL", "-a", "face:0.5:OUTALL", "--tolerance", "1"])
    assert code == 0


def test_help_does_not_import_torch() -> None:
    code = ("import sys\nfrom lbw.interfaces.cli.app import run\n"
            "import contextlib, io\nwith contextlib.redirect_stdout(io.StringIO()):\n"
            "    run(['bake', '--help']); run(['merge', '--help']); run(['verify', '--help'])\n"
            "print(sorted(m for m in ('torch', 'safetensors', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr
