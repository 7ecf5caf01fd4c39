"""Record the SHA-256 of ``lbw merge`` outputs over a broad set of cases, or compare them with a record.

Used to show that a change to the merge implementation keeps its output byte for byte: run ``--record`` on the
old code, ``--compare`` on the new. The cases: every fixture kind of ``lbw.files.fixtures`` (LoRA, LoCon,
Tucker, LoHa, LoKr, IA3, DoRA, full, norm, PEFT with config alphas, every Flux/SDXL naming family) in fp16,
bf16 and fp32; merges of one, two and three inputs with strengths and block weights (zeros, negatives,
identity); ``--rank``/``--conv-rank``; ``--dtype``; mixed kinds; DoRA and IA3 with a base model; refusals
(their error messages are recorded instead of a hash). Each case also records the report's counts.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python tools/merge_bytes.py --record /tmp/merge.json`` then
``... --compare /tmp/merge.json`` (exit code 1 when a case differs).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SD = (r"down.blocks.0.attentions.0.transformer.blocks.0.attn1.to.[qk]|mid.block.attentions.0.proj.in"
      r"|down.blocks.0.resnets.0.conv1|encoder.layers.0.self.attn.q|up.blocks.3.attentions.2.proj.out"
      r"|encoder.layers.0.mlp.fc1|down.blocks.0.downsamplers.0.conv|time.emb|norm1")
XL = (r"input.blocks.4.1.transformer.blocks.0.attn1.to.[qk]|middle.block.1.proj.in|output.blocks.0.1.proj.out"
      r"|te1.text.model.encoder.layers.0.self.attn.q|te2.text.model.encoder.layers.0.mlp.fc1"
      r"|down.blocks.1.attentions.0.transformer.blocks.0.attn1.to.[qk]|mid.block.attentions.0.proj.in"
      r"|encoder.layers.0.self.attn.q")
FLUX = (r"double.blocks.0.img.attn.qkv|double.blocks.7.txt.mlp.0|single.blocks.0.linear2|single.blocks.20.linear1"
        r"|transformer.blocks.0.attn.to.q|single.transformer.blocks.0.proj.out|transformer.blocks.7.ff.context.net.0"
        r"|encoder.layers.0.self.attn.q")
SELECT = {"sd15": SD, "sd2": SD, "sdxl": XL, "flux": FLUX}
SD_VECTOR = "Mix:0.75,0.5,-0.5,1,1,1.75,1,0,1,1,1,1,1,1,1,1,2"
XL_VECTOR = "XLMix:0.5,1,-0.5,1,1,1.5,0,1,1,1,1,0.25"
EXACT = ("sd15", "sd15_locon", "sd15_locon_tucker", "sd15_full", "sd15_norm", "sd15_ia3", "sd15_peft", "sd2")
INEXACT = ("sd15_loha", "sd15_loha_tucker", "sd15_lokr", "sd15_lokr_full", "sd15_lokr_tucker", "sd15_dora")
OTHERS = ("sd15_peft_bare", "sd15_processor", "sdxl", "sdxl_locon", "sdxl_peft", "sdxl_onetrainer",
          "sdxl_simpletuner_lycoris", "flux", "flux_te", "flux_onetrainer", "flux_simpletuner_lycoris",
          "flux_aitoolkit", "flux_diffusers", "flux_peft", "flux_peft_base", "flux_comfyui")


class Files:
    """Fixture files written on first use, by (kind, dtype, variant)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.made: dict[tuple[str, str, int], Path] = {}

    def __call__(self, kind: str, dtype: str = "fp16", variant: int = 0) -> Path:
        from lbw.files.fixtures import write_fixture
        from lbw.files.fixtures.kinds import KINDS

        key = (kind, dtype, variant)
        if key not in self.made:
            rank, alpha = [(4, 2.0), (3, 6.0), (2, 2.0)][variant]
            select = SELECT[KINDS[kind].architecture] if kind != "sd15_processor" else None
            path = self.folder / f"{kind}-{dtype}-{variant}.safetensors"
            self.made[key] = write_fixture(kind, path, rank=rank, alpha=alpha, dtype=dtype, seed=7 * variant + 1,
                                           select=select, conv_rank=rank + 1 if variant == 1 else None)
        return self.made[key]


def write_base(folder: Path, files: Files) -> Path:
    """A base "checkpoint" for the sd15 modules of the cases (DoRA and IA3 with ``--rank``)."""
    import torch
    from safetensors.torch import save_file

    from lbw.files.lora_file import LoraFile

    gen = torch.Generator().manual_seed(5)
    tensors = {}
    with LoraFile.open(files("sd15", "fp32")) as lora:
        for module in lora.modules:
            up, down = module.shapes["lora_up"], module.shapes["lora_down"]
            path = module.name.removeprefix("lora_unet_").removeprefix("lora_te_")
            tensors[f"model_{path}.weight"] = torch.randn(up[0], *down[1:], generator=gen)
    out = folder / "base.safetensors"
    save_file(tensors, str(out))
    return out


def cases(files: Files, base: Path) -> Iterator[tuple[str, list[str], dict]]:
    """(name, specs, MergeOptions keywords)."""
    for dtype in ("fp16", "bf16", "fp32"):
        for kind in EXACT:
            a, b, c = files(kind, dtype, 0), files(kind, dtype, 1), files(kind, dtype, 2)
            yield f"{kind}-{dtype}-pair", [f"{a}:0.8:{SD_VECTOR}", f"{b}:-0.5"], {}
            yield f"{kind}-{dtype}-three", [f"{a}:0.8:{SD_VECTOR}", f"{b}:-0.5", f"{c}:1.25:OUTALL"], {}
            yield f"{kind}-{dtype}-one", [f"{a}:0.6:{SD_VECTOR}"], {}
            yield f"{kind}-{dtype}-identity", [f"{a}", f"{b}:1:{SD_VECTOR}"], {}
            yield f"{kind}-{dtype}-rank2", [f"{a}:0.8:{SD_VECTOR}", f"{b}:-0.5"], {"rank": 2, "model": base}
            yield f"{kind}-{dtype}-rank8", [f"{a}:0.8", f"{b}:0.5"], {"rank": 8, "model": base}
            yield f"{kind}-{dtype}-rank3-conv2", [f"{a}:0.8", f"{b}:0.5"], {"rank": 3, "conv_rank": 2, "model": base}
            for out in ("fp16", "bf16", "fp32"):
                if out != dtype:
                    yield f"{kind}-{dtype}-to-{out}", [f"{a}:0.8:{SD_VECTOR}", f"{b}:-0.5"], {"dtype": out}
        for kind in INEXACT:
            a, b = files(kind, dtype, 0), files(kind, dtype, 1)
            yield f"{kind}-{dtype}-one", [f"{a}:0.6:{SD_VECTOR}"], {}
            yield f"{kind}-{dtype}-identity", [f"{a}"], {}
            yield f"{kind}-{dtype}-pair-refused", [f"{a}:0.8", f"{b}:-0.5"], {}
            yield f"{kind}-{dtype}-rank3", [f"{a}:0.8:{SD_VECTOR}", f"{b}:-0.5"], {"rank": 3, "model": base}
            yield f"{kind}-{dtype}-rank6-conv2", [f"{a}:0.8", f"{b}:-0.5"], {"rank": 6, "conv_rank": 2, "model": base}
            yield f"{kind}-{dtype}-with-lora-rank4", [f"{a}:0.8", f"{files('sd15', dtype, 1)}:0.5"], \
                {"rank": 4, "model": base}
        lora, tucker, full = files("sd15", dtype, 0), files("sd15_locon_tucker", dtype, 1), files("sd15_full", dtype)
        yield f"mixed-{dtype}-lora-tucker", [f"{lora}:0.7:{SD_VECTOR}", f"{tucker}:-1.5"], {}
        yield f"mixed-{dtype}-lora-full-refused", [f"{lora}:0.7", f"{full}:0.5"], {}
        yield f"mixed-{dtype}-lora-full-rank4", [f"{lora}:0.7", f"{full}:0.5"], {"rank": 4}
        yield f"mixed-{dtype}-lora-ia3-rank4", [f"{lora}:0.7", f"{files('sd15_ia3', dtype)}:0.5"], \
            {"rank": 4, "model": base}
        yield f"mixed-{dtype}-lora-peft", [f"{lora}:0.7", f"{files('sd15_peft', dtype)}:0.5"], {}
        yield f"mixed-{dtype}-zero", [f"{lora}:0", f"{files('sd15', dtype, 1)}:0"], {}
    for kind in OTHERS:
        for dtype in ("fp16", "bf16"):
            vector = XL_VECTOR if kind.startswith("sdxl") else SD_VECTOR if kind.startswith("sd15") else ""
            weights = f":{vector}" if vector else ""
            a, b = files(kind, dtype, 0), files(kind, dtype, 1)
            yield f"{kind}-{dtype}-pair", [f"{a}:0.8{weights}", f"{b}:-0.5"], {}
            yield f"{kind}-{dtype}-one", [f"{a}:1.5"], {}
            yield f"{kind}-{dtype}-rank2", [f"{a}:0.8", f"{b}:-0.5"], {"rank": 2}
            yield f"{kind}-{dtype}-to-fp32", [f"{a}:0.8", f"{b}:-0.5"], {"dtype": "fp32"}
    xl, peft = files("sdxl", "fp16", 0), files("sdxl_peft", "fp16", 1)
    yield "mixed-sdxl-kohya-peft", [f"{xl}:0.8:{XL_VECTOR}", f"{peft}:0.5"], {}


def run_case(specs: list[str], keywords: dict, out: Path) -> dict:
    from lbw.errors import LbwError
    from lbw.services.merge import MergeOptions, merge
    from lbw.services.sources import Defaults, open_source, split_specs

    sources = [open_source(spec, Defaults()) for spec in split_specs(specs)]
    try:
        report = merge(sources, out, options=MergeOptions(**keywords))
    except LbwError as error:  # the temporary folder's name is left out
        return {"error": f"{type(error).__name__}: {error}".replace(str(out.parent), "<work>")}
    finally:
        for source in sources:
            source.lora.close()
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    out.unlink()
    return {"sha256": digest, "counts": [report.modules_out, report.joined, report.carried, report.summed,
                                         report.compressed], "error": round(report.overall_error, 12)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--record", type=Path)
    group.add_argument("--compare", type=Path)
    args = parser.parse_args()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lbw-merge-bytes-") as folder:
        work = Path(folder)
        files = Files(work)
        base = write_base(work, files)
        for name, specs, keywords in cases(files, base):
            results[name] = run_case(specs, keywords, work / "out.safetensors")
    written = sum("sha256" in r for r in results.values())
    print(f"{len(results)} cases: {written} written, {len(results) - written} refused")
    if args.record:
        args.record.write_text(json.dumps(results, indent=1, sort_keys=True))
        return 0
    expected = json.loads(args.compare.read_text())
    differ = sorted(name for name in expected.keys() | results.keys() if expected.get(name) != results.get(name))
    for name in differ:
        print(f"DIFFERS {name}: {expected.get(name)} -> {results.get(name)}")
    print("identical" if not differ else f"{len(differ)} cases differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
