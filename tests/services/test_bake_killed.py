"""A bake killed mid-write (SIGKILL) or interrupted (Ctrl-C) leaves no output file.

The bake runs in a child process; the child wraps the writer's ``open`` so that, after the first megabyte of
the output has been written to the temporary file, it kills itself (or raises KeyboardInterrupt, as Ctrl-C
does). Everything else is the real code path: LoraFile, bake, save_lora, atomic_path.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lbw.files.fixtures import write_fixture

CHILD = textwrap.dedent("""
    import builtins, os, signal, sys
    import lbw.files.writer as writer
    from lbw.domain.layouts import SD26
    from lbw.domain.weights import BlockWeights
    from lbw.services.bake import bake

    src, out, how = sys.argv[1], sys.argv[2], sys.argv[3]

    class Dying:
        def __init__(self, handle):
            self.handle, self.written = handle, 0
        def write(self, data):
            self.handle.write(data)
            self.written += len(data)
            if self.written > 1 << 20:
                self.handle.flush()
                print("temp files:", sorted(p for p in os.listdir(os.path.dirname(out)) if p.endswith(".tmp")),
                      flush=True)
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise KeyboardInterrupt
            return len(data)
        def __getattr__(self, name):
            return getattr(self.handle, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.handle.close()

    writer.open = lambda path, mode="r", *a, **k: Dying(builtins.open(path, mode, *a, **k)) if "w" in mode \\
        else builtins.open(path, mode, *a, **k)
    bake(src, out, BlockWeights.filled(SD26, 0.5))
""")


@pytest.mark.parametrize("how", ["kill", "interrupt"])
def test_killed_bake_leaves_no_output(tmp_path: Path, how: str) -> None:
    src = write_fixture("sd15", tmp_path / "in.safetensors", rank=16, dtype="fp32",
                        select="down_blocks_0|up_blocks_3|encoder_layers_[0-3]_")
    assert src.stat().st_size > 2 << 20
    out = tmp_path / "out.safetensors"
    child = subprocess.run([sys.executable, "-c", CHILD, str(src), str(out), how],
                           capture_output=True, text=True, timeout=120)
    assert ".out.safetensors." in child.stdout  # the write was under way, in a temporary file
    assert not out.exists()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp"))
    if how == "kill":
        assert child.returncode == -signal.SIGKILL
        assert len(leftovers) == 1  # SIGKILL cannot clean up: a hidden temp file, never the output
    else:
        assert child.returncode != 0 and "KeyboardInterrupt" in child.stderr
        assert leftovers == []  # Ctrl-C removes the temporary file
