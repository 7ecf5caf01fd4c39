"""The streaming merge (two passes, tensors produced as the writer reaches them) writes the bytes of lbw's
one-pass merge: SHA-256 pinned for cases of every merge path (joined, carried, Tucker folded, summed, SVD of a
dense sum and of joined factors, PEFT config alphas, ``--dtype``); a module is merged once, when it is written,
unless pass 1 needs it merged (an overflow check, an SVD, kept); a merge's peak memory stays near the size of
its inputs."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from lbw.files.fixtures import write_fixture
from lbw.services.merge import MergeOptions, merge
from lbw.services.sources import Defaults, open_source, split_specs

SD = (r"down.blocks.0.attentions.0.transformer.blocks.0.attn1.to.[qk]|mid.block.attentions.0.proj.in"
      r"|down.blocks.0.resnets.0.conv1|encoder.layers.0.self.attn.q|up.blocks.3.attentions.2.proj.out")
XL = r"input.blocks.4.1.transformer.blocks.0.attn1.to.[qk]|middle.block.1.proj.in|te2.text.model.encoder.layers.0"
VECTOR = "Mix:0.75,0.5,-0.5,1,1,1.75,1,0,1,1,1,1,1,1,1,1,2"

# (kinds of the two inputs, their dtypes, the second's strength, MergeOptions keywords) -> SHA-256 of the output
# as lbw's one-pass merge wrote it (before the streaming merge).
PINNED = {
    "lora-pair": (("sd15", "sd15"), ("fp16", "fp16"), "-0.5", {},
        "6445f0ba9ba2284d11c9a7c08cda77fb86417f54893859680a45855f784456c7"),
    "tucker-and-plain": (("sd15_locon_tucker", "sd15"), ("fp32", "fp32"), "1.5", {},
        "19b22a0c2cc9057f6ec6847722a29f2372f41bcba8c7f7d61c416f6254033859"),
    "full-summed": (("sd15_full", "sd15_full"), ("bf16", "bf16"), "0.25", {},
        "11497041ca667c358e3a5269ebc78d8dc05973b5a0d07e3cb962258600af44a7"),
    "loha-svd": (("sd15_loha", "sd15_loha"), ("fp16", "fp16"), "-0.5", {"rank": 3, "conv_rank": 2},
        "22469042650f73c0bd117a0c218994bdc8b042d8a2b418d742eb7290343a0107"),
    "peft-to-fp32": (("sd15_peft", "sd15_peft"), ("fp16", "fp16"), "0.5", {"dtype": "fp32"},
        "e0dc1f3d676d6ec529b981dc2f23002af3574c46b691071559d68ebf9d8522e5"),
    "sdxl-rank": (("sdxl", "sdxl"), ("bf16", "bf16"), "-0.5", {"rank": 2},
        "e97b04e9611f1de96edcf66fc9d58320a12067c13b9fef59e0b517fe4d3bbe80"),
    "fp16-and-fp32": (("sd15", "sd15_locon"), ("fp16", "fp32"), "0.5", {},  # two dtype groups in the file
        "554b015fb721115cab46666664ecca3192c9ebdc3edff72492da3c4118c95dde"),
}


def merged_sha256(folder: Path, case: str) -> str:
    (first, second), (dtype_a, dtype_b), strength, options, _ = PINNED[case]
    select = XL if first.startswith("sdxl") else SD
    a = write_fixture(first, folder / f"{case}-a.safetensors", rank=4, alpha=2, dtype=dtype_a, seed=1, select=select)
    b = write_fixture(second, folder / f"{case}-b.safetensors", rank=3, alpha=6, dtype=dtype_b, seed=8, select=select,
                      conv_rank=5)
    sources = [open_source(spec, Defaults()) for spec in split_specs([f"{a}:0.8:{VECTOR}", f"{b}:{strength}"])]
    out = folder / f"{case}.safetensors"
    try:
        merge(sources, out, options=MergeOptions(**options))
    finally:
        for source in sources:
            source.lora.close()
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(PINNED))
def test_the_streaming_merge_writes_the_bytes_of_the_one_pass_merge(case: str, tmp_path: Path) -> None:
    assert merged_sha256(tmp_path, case) == PINNED[case][-1]


def test_a_module_is_merged_once_unless_an_overflow_check_or_svd_needs_it_in_pass_1(tmp_path: Path,
                                                                                       monkeypatch) -> None:
    import lbw.services.merge_stream as stream

    calls: list[str] = []
    real = stream.merge_module

    def counting(terms, *args):
        calls.append(terms[0][1].name)
        return real(terms, *args)

    monkeypatch.setattr(stream, "merge_module", counting)
    a = write_fixture("sd15", tmp_path / "a.safetensors", rank=4, dtype="fp16", seed=1, select=SD)
    b = write_fixture("sd15", tmp_path / "b.safetensors", rank=3, dtype="fp16", seed=2, select=SD)
    plain = [open_source(spec, Defaults()) for spec in split_specs([f"{a}:0.8", f"{b}:-0.5"])]
    report = merge(plain, tmp_path / "plain.safetensors")
    assert len(calls) == report.modules_out == 5  # known from the headers: merged in pass 2 only, once each
    calls.clear()
    weighted = [open_source(spec, Defaults()) for spec in split_specs([f"{a}:0.8:{VECTOR}", f"{b}:-0.5"])]
    report = merge(weighted, tmp_path / "weighted.safetensors")
    above_1 = {module.name for source in weighted for module in source.lora.modules
               if abs(source.plan.factor(module)) > 1}  # OUT11 at 0.8 x 2: merged in pass 1 for its check
    assert above_1 and len(calls) == report.modules_out + len(above_1)
    assert sorted(name for name in set(calls) if calls.count(name) == 2) == sorted(above_1)
    calls.clear()
    report = merge(weighted, tmp_path / "svd.safetensors", options=MergeOptions(rank=5))
    assert 0 < report.compressed < report.modules_out  # rank 4 + 3 > 5 where joined; carried ones stay exact
    assert len(calls) == 2 * report.modules_out - report.compressed  # an SVD is never done twice
    for source in plain + weighted:
        source.lora.close()


# In a child process: peak RSS (VmHWM) minus the RSS after the imports, over the size of both inputs.
MEMORY = """
import sys
import torch, safetensors  # noqa: F401
from lbw.services.merge import merge
from lbw.services.sources import Defaults, open_source, parse_spec
def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))
before = kb("VmRSS:")
merge([open_source(parse_spec(f"{sys.argv[1]}:0.8"), Defaults()), open_source(parse_spec(f"{sys.argv[2]}:-0.5"),
      Defaults())], sys.argv[3])
print(before, kb("VmHWM:"))
"""


def test_peak_memory_of_a_merge_stays_near_the_size_of_its_inputs(tmp_path: Path) -> None:
    a = write_fixture("sdxl", tmp_path / "a.safetensors", rank=12, dtype="fp16", seed=1)
    b = write_fixture("sdxl", tmp_path / "b.safetensors", rank=12, dtype="fp16", seed=2)
    inputs = a.stat().st_size + b.stat().st_size
    child = subprocess.run([sys.executable, "-c", MEMORY, str(a), str(b), str(tmp_path / "ab.safetensors")],
                           capture_output=True, text=True, check=True, timeout=300)
    before, peak = (int(v) * 1024 for v in child.stdout.split())
    assert (tmp_path / "ab.safetensors").stat().st_size > 0.99 * inputs  # as large as both inputs
    # the inputs are memory-mapped (their pages count once); the one-pass merge also held the whole output (2x+)
    assert (peak - before) / inputs < 1.5
