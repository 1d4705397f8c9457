"""Inverters and prompt-to-prompt on tiny random diffusion models built in code."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.generation.editor_p2p import PromptToPromptEditor
from src.generation.inversion import Inversion
from src.generation.inverter_ddim import DDIMInverter
from src.generation.inverter_direct import DirectInverter
from src.generation.inverter_negative_prompt import NegativePromptInverter
from src.generation.inverter_null_text import NullTextInverter
from src.generation.seq_aligner import word_token_indices
from src.generation.tiny_models import tiny_diffusion

SRC = "a photo of a red star on green grass"


@pytest.fixture(scope="module")
def image():
    rng = np.random.RandomState(0)
    return Image.fromarray(rng.randint(0, 255, (16, 16, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def model():
    return tiny_diffusion(image_size=16, num_inference_steps=5, seed=0)


def _sample(d, inv: Inversion, prompt: str, guidance: float) -> torch.Tensor:
    cond = d.encode_prompts([prompt])
    x = inv.latents[-1:]
    with torch.no_grad():
        for i, t in enumerate(d.timesteps):
            x = d.step(d.guided_prediction(x, t, cond, inv.uncond_at(i), guidance), t, x)
    return x


def test_ddim_round_trip_exact_when_unet_predicts_zero(image):
    d = tiny_diffusion(image_size=16, num_inference_steps=5, seed=1)
    torch.nn.init.zeros_(d.unet.conv_out.weight)
    torch.nn.init.zeros_(d.unet.conv_out.bias)
    inv = DDIMInverter(d, guidance_scale=7.5).invert(image, SRC)
    assert inv.latents.shape[0] == 6 and inv.cost.unet_evals == 5
    assert not torch.allclose(inv.latents[-1], inv.latents[0])  # it did move to noise
    err = (_sample(d, inv, SRC, 7.5) - inv.latents[:1]).abs().max().item()
    assert err < 1e-5


def test_null_text_beats_ddim_at_guidance_7_5(model, image):
    ddim = DDIMInverter(model, guidance_scale=7.5).invert(image, SRC)
    null = NullTextInverter(model, guidance_scale=7.5, num_inner_steps=5, lr=5e-2).invert(image, SRC)
    x0 = ddim.latents[:1]
    err_ddim = (_sample(model, ddim, SRC, 7.5) - x0).pow(2).mean().item()
    err_null = (_sample(model, null, SRC, 7.5) - x0).pow(2).mean().item()
    assert err_null < err_ddim, (err_null, err_ddim)
    assert null.uncond_embeddings.shape[0] == 5
    assert null.cost.unet_evals > ddim.cost.unet_evals


def test_inversion_save_load_round_trip(model, image, tmp_path):
    inv = NegativePromptInverter(model).invert(image, SRC)
    inv.save(tmp_path / "inv.safetensors")
    back = Inversion.load(tmp_path / "inv.safetensors")
    assert torch.equal(back.latents, inv.latents) and torch.equal(back.uncond_embeddings, inv.uncond_embeddings)
    assert back.prompt == SRC and back.method == "negative_prompt" and back.cost.unet_evals == inv.cost.unet_evals


def test_p2p_identical_prompt_reproduces_reconstruction(model, image):
    inv = NegativePromptInverter(model).invert(image, SRC)
    out = PromptToPromptEditor(model).edit(inv, SRC, [SRC, "a photo of a blue star on green grass"], [0.4, 0.9])
    recon = np.asarray(out.reconstruction).astype(int)
    for _, im in out.candidates[0]:
        assert np.abs(np.asarray(im).astype(int) - recon).max() <= 1
    assert any(np.abs(np.asarray(im).astype(int) - recon).max() > 1 for _, im in out.candidates[1])
    assert out.cost.unet_evals == 5  # the whole sweep ran in one UNet batch per step
    assert out.cost.extra["unet_samples"] == 5 * 2 * 5  # (source + 4 jobs) x CFG x steps


def test_word_swap_keeps_source_cross_attention_of_unchanged_tokens(model, image):
    inv = NegativePromptInverter(model).invert(image, SRC)
    target = "a photo of a red heart on green grass"
    editor = PromptToPromptEditor(model, cross_replace_steps=0.6)
    maps = []
    editor.recorder = lambda step, layer, is_cross, probs: maps.append((step, is_cross, probs.clone()))
    editor.edit(inv, SRC, [target], [0.5])
    changed = set(word_token_indices(target, 5, model.tokenizer).tolist())
    assert changed, "the swapped word must map to tokens"
    keep = [k for k in range(model.max_tokens) if k not in changed]
    cross = [(s, p) for s, c, p in maps if c]
    replaced = [p for s, p in cross if s < 3]
    free = [p for s, p in cross if s >= 3]
    assert replaced and free
    for p in replaced:
        torch.testing.assert_close(p[1][..., keep], p[0][..., keep])
    assert any(not torch.allclose(p[1][..., keep], p[0][..., keep]) for p in free)


@pytest.mark.parametrize("latent,prediction", [(False, "epsilon"), (True, "v_prediction")])
def test_p2p_runs_for_pixel_space_and_v_prediction(latent, prediction, image):
    d = tiny_diffusion(latent=latent, prediction_type=prediction, image_size=16, num_inference_steps=2)
    inv = DDIMInverter(d).invert(image, SRC)
    out = PromptToPromptEditor(d).edit(inv, SRC, ["a photo of a red star on green grass at night"], [0.5])
    assert out.reconstruction.size == (16, 16) and out.candidates[0][0][1].size == (16, 16)


def test_direct_inversion_reconstructs_exactly_where_ddim_drifts(model, image):
    """Pinning the source branch to the inversion trajectory gives back x_0 at guidance 7.5; the edited
    branch still follows its own prompt."""
    ddim = DDIMInverter(model, guidance_scale=7.5).invert(image, SRC)
    direct = DirectInverter(model, guidance_scale=7.5).invert(image, SRC)
    assert direct.pin_source and not ddim.pin_source
    assert torch.equal(direct.latents, ddim.latents) and direct.cost.unet_evals == ddim.cost.unet_evals
    editor = PromptToPromptEditor(model, guidance_scale=7.5)
    target = "a photo of a blue star on green grass"
    out_direct = editor.edit(direct, SRC, [target], [0.5])
    out_ddim = editor.edit(ddim, SRC, [target], [0.5])
    rec_direct = np.asarray(out_direct.reconstruction).astype(int)
    decoded_x0 = np.asarray(model.decode(direct.latents[:1])[0]).astype(int)
    assert np.abs(rec_direct - decoded_x0).max() <= 1
    assert np.abs(np.asarray(out_ddim.reconstruction).astype(int) - decoded_x0).max() > 1
    edited = np.asarray(out_direct.candidates[0][0][1]).astype(int)
    assert np.abs(edited - rec_direct).max() > 1


def test_inversion_round_trip_keeps_pin_source(model, image, tmp_path):
    inv = DirectInverter(model).invert(image, SRC)
    inv.save(tmp_path / "direct.safetensors")
    back = Inversion.load(tmp_path / "direct.safetensors")
    assert back.pin_source and back.method == "direct"
