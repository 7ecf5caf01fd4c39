"""Single-file (.safetensors, original LDM/CompVis keys) checkpoints with a local diffusers folder as config.

The checkpoint is the tiny SD1.5 pipeline with every parameter shifted, so its weights differ from the config
folder's: a loaded parameter equal to the file's proves it came from the file, not from the config folder.
No network exists here, so a successful load also shows that nothing was downloaded.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lbw.errors import RenderError
from lbw.files.safetensors_header import read_header
from lbw.render.backends.diffusers_backend import DiffusersBackend, load_pipeline
from lbw.render.backends.single_file import missing_weights
from lbw.render.ldm_checkpoint import save_ldm_checkpoint
from lbw.render.plan import Cell, LoraSpec, Plan
from lbw.render.runner import run_plan
from lbw.services.demo_render import demo_settings

COMPONENTS = ("unet", "vae", "text_encoder")
W = (1, 0, 0.5, -0.5, 1.5, 1, 0, 0.5, 1, -0.5, 1.5, 0, 1, 0.5, 1, 1.5, -0.5, 0, 1, 0.5, 1, 1, -0.5, 1.5, 0, 1)


def shifted_copy(pipe, amount: float = 0.01):
    """A deep copy of ``pipe`` with every parameter of its models moved by ``amount``."""
    other = copy.deepcopy(pipe)
    with torch.no_grad():
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            model = getattr(other, name, None)
            for parameter in model.parameters() if model is not None else ():
                parameter.add_(amount)
    return other


@pytest.fixture(scope="module")
def single_file(tiny_pipe, tmp_path_factory):
    """(source pipeline, checkpoint path)."""
    source = shifted_copy(tiny_pipe)
    return source, save_ldm_checkpoint(source, tmp_path_factory.mktemp("single") / "tiny-sd15.safetensors")


def test_checkpoint_uses_the_original_key_layout(single_file):
    _, checkpoint = single_file
    keys = set(read_header(checkpoint).tensors)
    for key in ("model.diffusion_model.input_blocks.1.1.proj_in.weight",
                "model.diffusion_model.input_blocks.1.0.in_layers.2.weight",
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.output_blocks.2.1.conv.weight",
                "model.diffusion_model.output_blocks.5.2.conv.weight",
                "model.diffusion_model.middle_block.1.proj_in.weight",
                "first_stage_model.decoder.up.3.block.0.conv1.weight",
                "first_stage_model.encoder.mid.attn_1.q.weight",
                "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight"):
        assert key in keys, key
    assert not any(key.startswith(("unet.", "down_blocks", "text_model")) for key in keys)


def test_single_file_loads_offline_with_every_weight_from_the_file(single_file, tiny_assets, tiny_pipe):
    source, checkpoint = single_file
    folder, _ = tiny_assets
    pipe = load_pipeline(checkpoint, device="cpu", dtype=torch.float32, model_config=folder)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    for name in COMPONENTS:
        loaded = dict(getattr(pipe, name).named_parameters())
        expected = dict(getattr(source, name).named_parameters())
        config = dict(getattr(tiny_pipe, name).named_parameters())
        assert set(loaded) == set(expected), name
        assert [key for key in expected if not torch.equal(loaded[key], expected[key])] == [], name
        assert all(not torch.equal(loaded[key], config[key]) for key in expected), name
    assert missing_weights(checkpoint, pipe) == {}


def test_single_file_renders_like_the_same_model_as_a_folder(single_file, tiny_assets, tmp_path):
    """The plan renders from the single file (+ config folder) as from the same weights saved as a folder."""
    from lbw.render.tiny import quiet_logs

    source, checkpoint = single_file
    config, lora = tiny_assets
    quiet_logs()
    folder = tmp_path / "as-folder"
    source.save_pretrained(str(folder), safe_serialization=True)

    def render(model, backend, out):
        plan = Plan(kind="custom", layout="SD26", cells=(Cell("W", tuple(map(float, W))),),
                    settings=demo_settings((1,)), loras=(LoraSpec(path=str(lora), name="tiny"),), model=str(model))
        result = run_plan(plan, backend, out)
        return np.asarray(result.image(plan.jobs()[0]))

    from_file = render(checkpoint, DiffusersBackend(device="cpu", model_config=config), tmp_path / "a")
    from_folder = render(folder, DiffusersBackend(device="cpu"), tmp_path / "b")
    # The weights are equal (previous test); the tensors sit at other memory alignments, which changes the
    # float32 rounding of CPU kernels: at most 2 levels of 255 (measured: 1 level on 0.04% of the samples).
    assert np.abs(from_file.astype(int) - from_folder.astype(int)).max() <= 2


@pytest.mark.parametrize(
    ("dropped", "message"),
    [
        ("model.diffusion_model.input_blocks.1.1.proj_in.weight",
         r"no weights for some parameters .*unet: 1 \(down_blocks\.0\.attentions\.0\.proj_in\.weight\)"),
        ("cond_stage_model.transformer.text_model.encoder.layers.1.mlp.fc1.weight",
         r"text_encoder: 1 \(encoder\.layers\.1\.mlp\.fc1\.weight\)"),
        ("first_stage_model.", r"cannot load the model: Failed to load AutoencoderKL\. Weights for this component"),
    ],
)
def test_incomplete_checkpoints_are_refused(single_file, tiny_assets, tmp_path, dropped, message):
    """diffusers alone would leave the missing parameters at random values and render noise."""
    _, checkpoint = single_file
    tensors = {k: v for k, v in load_file(str(checkpoint)).items() if not k.startswith(dropped)}
    partial = tmp_path / "partial.safetensors"
    save_file(tensors, str(partial))
    with pytest.raises(RenderError, match=message):
        load_pipeline(partial, device="cpu", dtype=torch.float32, model_config=tiny_assets[0])


def test_config_folder_of_another_architecture_is_refused(single_file, tmp_path):
    from lbw.render.tiny import build_tiny_sd15

    _, checkpoint = single_file
    sd2 = build_tiny_sd15(tmp_path / "sd2", variant="sd2")
    with pytest.raises(RenderError, match=r"cannot load the model: .*same architecture\?\)"):
        load_pipeline(checkpoint, device="cpu", dtype=torch.float32, model_config=sd2)
