"""World training: every stage runs, a resumed run equals an uninterrupted one, the export loads and draws."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from lbw.world import checkpoint, training


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("world")
    torch.set_num_threads(1)
    training.make_data(work, training.DataConfig(pictures=24, seed=1))
    training.train_vae(work, training.VaeConfig(steps=2, batch=4, checkpoint_every=1))
    training.encode_latents(work)
    return work


def _copy_inputs(prepared: Path, folder: Path) -> Path:
    folder.mkdir()
    for name in ("data.npz", "data.json", "latents.safetensors"):
        (folder / name).write_bytes((prepared / name).read_bytes())
    return folder


def test_resumed_base_training_equals_an_uninterrupted_one(prepared: Path, tmp_path: Path) -> None:
    config = training.BaseConfig(steps=4, batch=4, checkpoint_every=2, warmup=1)
    once, _ = checkpoint.load_checkpoint(training.train_base(_copy_inputs(prepared, tmp_path / "a"), config))
    interrupted = _copy_inputs(prepared, tmp_path / "b")
    training.train_base(interrupted, config)
    shutil.rmtree(interrupted / "base" / "step-000004")  # as if killed between the checkpoints of steps 2 and 4
    assert checkpoint.latest_checkpoint(interrupted / "base").name == "step-000002"
    twice, state = checkpoint.load_checkpoint(training.train_base(interrupted, config))
    assert state["step"] == 4
    assert set(once) == set(twice)
    for name in once:
        assert torch.equal(once[name], twice[name]), name


def test_export_is_a_pipeline_that_draws_64px(prepared: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    training.train_base(prepared, training.BaseConfig(steps=1, batch=2, checkpoint_every=1, warmup=0))
    folder = training.export_base(prepared, tmp_path / "model")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder))
    assert pipe.vae_scale_factor == 4
    image = pipe("1girl, red hair", num_inference_steps=2, height=64, width=64,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64)
    assert pipe.vae.config.scaling_factor != 0.18215


def test_refine_starts_from_the_base_with_whole_tag_tokens(prepared: Path, tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from lbw.world import model

    work = _copy_inputs(prepared, tmp_path / "r")
    shutil.copytree(prepared / "vae" / "final", work / "vae" / "final")
    training.train_base(work, training.BaseConfig(steps=2, batch=2, checkpoint_every=2, warmup=0))
    base, _ = checkpoint.load_checkpoint(checkpoint.latest_checkpoint(work / "base"))
    config = training.RefineConfig(steps=2, batch=2, checkpoint_every=1, warmup=0, learning_rate=0.0)
    tensors, _ = checkpoint.load_checkpoint(training.train_refine(work, config))
    # learning rate 0: the refined weights are the base's EMA weights, with rows appended for the tags
    old = base["ema.0"]
    new = tensors["text_encoder.embeddings.token_embedding.weight"]
    assert new.shape[0] == old.shape[0] + len(model.world_tags())
    assert torch.equal(new[: old.shape[0]], old)
    tokenizer = CLIPTokenizer.from_pretrained(str(training.export_base(work, tmp_path / "m") / "tokenizer"))
    assert tokenizer.tokenize("1girl, red hair, dark skin") == ["1girl", ",</w>", "red hair", ",</w>", "dark skin"]
    plain = model.build_tokenizer()
    red, hair = (old[i] for i in plain("red hair", add_special_tokens=False).input_ids)
    assert torch.allclose(new[tokenizer.convert_tokens_to_ids("red hair")], (red + hair) / 2)


def test_the_decoder_stage_leaves_the_encoder_and_so_every_latent_unchanged(prepared: Path, tmp_path: Path) -> None:
    from diffusers import AutoencoderKL

    from lbw.world.decoder import DecoderConfig, train_decoder

    work = _copy_inputs(prepared, tmp_path / "d")
    shutil.copytree(prepared / "vae" / "final", work / "vae" / "final")
    config = DecoderConfig(steps=2, batch=4, lora_pictures=4, warmup=0, checkpoint_every=1, learning_rate=1e-3)
    before = AutoencoderKL.from_pretrained(str(work / "vae" / "final"))
    after = AutoencoderKL.from_pretrained(str(train_decoder(work, config)))
    old, new = before.state_dict(), after.state_dict()
    frozen = [k for k in old if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in old if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained
    assert all(torch.equal(old[k], new[k]) for k in frozen)
    assert any(not torch.equal(old[k], new[k]) for k in trained)
    training.train_base(work, training.BaseConfig(steps=1, batch=2, checkpoint_every=1, warmup=0))
    exported = AutoencoderKL.from_pretrained(str(training.export_base(work, tmp_path / "m") / "vae"))
    assert torch.equal(exported.state_dict()["decoder.conv_out.weight"], new["decoder.conv_out.weight"])


def test_the_v_objective_is_the_velocity_and_the_picture_itself_at_zero_terminal_snr() -> None:
    from diffusers import DDPMScheduler

    from lbw.world import model

    latents = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(1))
    steps = torch.tensor([0, 500, 999])
    eps = DDPMScheduler(**model.scheduler_config())
    assert torch.equal(training.objective_target(eps, latents, noise, steps), noise)
    v = DDPMScheduler(**model.scheduler_config("v_prediction", zero_terminal_snr=True))
    target = training.objective_target(v, latents, noise, steps)
    ab = v.alphas_cumprod[steps].view(3, 1, 1, 1)
    assert torch.allclose(target, ab.sqrt() * noise - (1 - ab).sqrt() * latents, atol=1e-6)
    assert float(v.alphas_cumprod[-1]) == 0.0  # the last timestep keeps nothing of the picture ...
    assert torch.allclose(target[2], -latents[2])  # ... and the model must draw it from the caption alone


def test_the_exported_scheduler_carries_the_objective_each_stage_trained_with(prepared: Path, tmp_path: Path) -> None:
    import json

    work = _copy_inputs(prepared, tmp_path / "o")
    shutil.copytree(prepared / "vae" / "final", work / "vae" / "final")
    training.train_base(work, training.BaseConfig(steps=1, batch=2, checkpoint_every=1, warmup=0))
    base = json.loads((training.export_base(work, tmp_path / "b") / "scheduler" / "scheduler_config.json").read_text())
    assert (base["prediction_type"], base.get("rescale_betas_zero_snr", False)) == ("epsilon", False)
    training.train_refine(work, training.RefineConfig(steps=1, batch=2, checkpoint_every=1, warmup=0))
    exported = training.export_base(work, tmp_path / "r")
    refined = json.loads((exported / "scheduler" / "scheduler_config.json").read_text())
    assert (refined["prediction_type"], refined["rescale_betas_zero_snr"], refined["timestep_spacing"]) == (
        "v_prediction", True, "trailing")
    other = training.RefineConfig(steps=2, batch=2, checkpoint_every=1, warmup=0, prediction_type="epsilon")
    with pytest.raises(ValueError, match="trained with"):
        training.train_refine(work, other)  # resuming under another objective would mix two models


def test_a_lora_trains_on_the_models_own_objective_and_saves_kohya_names(prepared: Path, tmp_path: Path) -> None:
    from diffusers import DDPMScheduler

    from lbw.files.lora_file import LoraFile
    from lbw.world import lora_training

    work = _copy_inputs(prepared, tmp_path / "l")
    shutil.copytree(prepared / "vae" / "final", work / "vae" / "final")
    training.train_base(work, training.BaseConfig(steps=1, batch=2, checkpoint_every=1, warmup=0))
    training.train_refine(work, training.RefineConfig(steps=1, batch=2, checkpoint_every=1, warmup=0))
    folder = training.export_base(work, work / "model")
    assert DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler").config.prediction_type == "v_prediction"
    config = lora_training.LoraTrainConfig(name="gobuhime", pictures=8, steps=2, batch=2, warmup=0,
                                           checkpoint_every=1)
    dest = lora_training.train_lora(work, folder, config, tmp_path / "g.safetensors")
    lora = LoraFile.open(dest)
    assert lora.unmapped == ()
    assert lora.module("lora_unet_down_blocks_0_attentions_0_proj_in") is not None
    assert len(lora.blocks) == 25  # every LBW block but IN00, which kohya never adapts
    assert "IN00" not in lora.blocks
