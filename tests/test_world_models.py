"""The world's mini models: committed weights load offline through the hub code paths and do their job
(zero-shot class accuracy, reconstruction, an inversion + edit); the three train.py experiments run
under fast_dev_run with tiny models built in code; world_clip's text tower converts exactly."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from src.world.grammar import Factors, VOCABULARY, caption
from src.world.models import (WORLD_CLIP_PATH, WORLD_PIPELINE_PATH, WORLD_VAE_PATH, clip_tokenizer,
                              load_world_clip, load_world_pipeline, text_encoder_from_open_clip,
                              zero_shot_weights)
from src.world.renderer import WorldRenderer
from tests.conftest import compose_config

requires_clip = pytest.mark.skipif(not (WORLD_CLIP_PATH / "open_clip_config.json").is_file(),
                                   reason="assets/world/clip not built")
requires_vae = pytest.mark.skipif(not (WORLD_VAE_PATH / "config.json").is_file(), reason="assets/world/ldm/vae not built")
requires_ldm = pytest.mark.skipif(not (WORLD_PIPELINE_PATH / "model_index.json").is_file(),
                                  reason="assets/world/ldm not built")


def fresh_renders(n: int, seed: int = 12345) -> tuple[np.ndarray, list[Factors]]:
    """Independent-factor scenes from a seed no training split uses."""
    rng = np.random.default_rng(seed)
    renderer = WorldRenderer(32)
    factors = [Factors(**{k: v[rng.integers(len(v))] for k, v in VOCABULARY.items()}) for _ in range(n)]
    images = np.stack([renderer.render(f, int(rng.integers(2**31))) for f in factors])
    return images, factors


# ---------------------------------------------------------------------------------------------- world_clip
@requires_clip
def test_world_clip_zero_shot_class_accuracy(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # loading must not need the network
    model, tokenizer, preprocess = load_world_clip()
    images, factors = fresh_renders(64)
    x = torch.stack([preprocess(Image.fromarray(a)) for a in images])
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        txt = zero_shot_weights(model, tokenizer)  # template ensemble over the world grammar
    pred = (img @ txt.T).argmax(1)
    labels = torch.tensor([f.label for f in factors])
    acc = (pred == labels).float().mean().item()
    # Measured: 0.953 on these 64; 0.922 on 512 fresh renders (benchmarks/bench_world_clip.py; chance 0.125).
    assert acc >= 0.90, f"zero-shot class accuracy {acc:.3f} on 64 fresh renders"


@requires_clip
def test_world_clip_tells_single_factor_edits_apart():
    """The true caption scores above the caption with one factor swapped (what retrieval captioning and
    the consistency checks rely on). `benchmarks/bench_world_clip.py` (512 renders): shape 1.00, colour
    1.00, pattern 0.81, size 0.99, background 1.00, weather 1.00, domain 1.00, object 0.99, subject 0.99."""
    model, tokenizer, preprocess = load_world_clip()
    images, factors = fresh_renders(64, seed=7)
    x = torch.stack([preprocess(Image.fromarray(a)) for a in images])
    rng = np.random.default_rng(0)
    bounds = {"shape": 0.9, "colour": 0.9, "size": 0.9, "background": 0.9, "weather": 0.9, "domain": 0.9,
              "object": 0.9, "subject": 0.9}
    with torch.no_grad():
        img = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
        true = torch.nn.functional.normalize(model.encode_text(tokenizer([caption(f) for f in factors])), dim=-1)
        for factor, bound in bounds.items():
            wrong = [caption(f.replace(**{factor: rng.choice([v for v in VOCABULARY[factor] if v != getattr(f, factor)])}))
                     for f in factors]
            wrong = torch.nn.functional.normalize(model.encode_text(tokenizer(wrong)), dim=-1)
            acc = ((img * true).sum(1) > (img * wrong).sum(1)).float().mean().item()
            assert acc >= bound, f"{factor}: true caption preferred in {acc:.2f} of pairs (bound {bound})"


def test_text_encoder_conversion_is_exact():
    """CLIPTextModel built from an open_clip text tower gives the same per-token hidden states."""
    from src.modules.world_clip import build_clip

    torch.manual_seed(0)
    model = build_clip(32, {"image_size": 32, "patch_size": 8, "layers": 1, "width": 32, "head_width": 16},
                       {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}).eval()
    enc = text_encoder_from_open_clip(model)
    caps = ["a sketch of a small red striped star", "a photo of a ring on white snow"]
    ids = clip_tokenizer(16)(caps, padding="max_length", max_length=16, truncation=True,
                              return_tensors="pt").input_ids
    from open_clip.tokenizer import SimpleTokenizer

    oc = SimpleTokenizer(context_length=16)(caps)
    with torch.no_grad():
        hidden = enc(ids)[0]
        x = model.transformer(model.token_embedding(oc) + model.positional_embedding, attn_mask=model.attn_mask)
        ref = model.ln_final(x)
    for row in range(len(caps)):
        n = int((oc[row] != 0).sum())  # up to end-of-text; padding differs (0 vs 49407)
        assert torch.equal(ids[row, :n], oc[row, :n])
        torch.testing.assert_close(hidden[row, :n], ref[row, :n], atol=1e-5, rtol=1e-5)


@requires_clip
@requires_ldm
def test_world_ldm_text_encoder_is_world_clips_text_tower():
    """The pipeline is conditioned on world_clip's own text tower (same weights, same token ids)."""
    model, tokenizer, _ = load_world_clip()
    pipe = load_world_pipeline()
    ours = text_encoder_from_open_clip(model).state_dict()
    theirs = pipe.text_encoder.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    text = "a cartoon of a large blue dotted heart on desert sand at night next to a lamp with a robot"
    ids = pipe.tokenizer([text], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids[0]
    n = int((tokenizer([text])[0] != 0).sum())
    assert torch.equal(ids[:n], tokenizer([text])[0, :n])


# ---------------------------------------------------------------------------------------------- world_vae
@requires_vae
def test_world_vae_reconstruction_psnr(monkeypatch):
    from diffusers import AutoencoderKL

    from src.modules.world_vae import psnr

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    vae = AutoencoderKL.from_pretrained(str(WORLD_VAE_PATH)).eval()
    images, _ = fresh_renders(32, seed=99)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mode()
        rec = vae.decode(z).sample
    assert z.shape[1:] == (4, 16, 16)
    # Latents scaled by scaling_factor are roughly unit variance (what the diffusion model was trained on).
    assert 0.5 < (z * vae.config.scaling_factor).std().item() < 2.0
    value = psnr(rec, x).item()
    assert value >= 26.0, f"world_vae reconstruction PSNR {value:.2f} dB"  # measured 26.8 dB on these 32


# ---------------------------------------------------------------------------------------------- world_ldm
@requires_ldm
def test_world_pipeline_inversion_and_edit_run_offline(monkeypatch):
    from src.generation.diffusion import DiffusionModel
    from src.generation.editor_p2p import PromptToPromptEditor
    from src.generation.inverter_negative_prompt import NegativePromptInverter

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_world_pipeline()
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim
    diffusion = DiffusionModel.from_pretrained(str(WORLD_PIPELINE_PATH), num_inference_steps=4)
    images, factors = fresh_renders(2, seed=3)
    inverter = NegativePromptInverter(diffusion=diffusion, guidance_scale=3.0)
    editor = PromptToPromptEditor(diffusion=diffusion, guidance_scale=3.0)
    for image, f in zip(images, factors):
        source = caption(f)
        target = caption(f.replace(background="snow" if f.background != "snow" else "sand"))
        inversion = inverter.invert(Image.fromarray(image), source)
        assert inversion.latents.shape == (5, 4, 16, 16) and torch.isfinite(inversion.latents).all()
        out = editor.edit(inversion, source, [target], [0.6])
        for im in [out.reconstruction, out.candidates[0][0][1]]:
            arr = np.asarray(im)
            assert arr.shape == (32, 32, 3) and arr.dtype == np.uint8
        assert out.cost.unet_evals == 4

# ---------------------------------------------------------------------------------------------- training smoke
@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory):
    """A tiny world_clip folder and world_vae folder built in code (random weights)."""
    from src.modules.world_clip import build_clip, save_open_clip_folder
    from src.modules.world_vae import build_vae

    root = tmp_path_factory.mktemp("tiny-world-models")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 16, "head_width": 8},
           "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    save_open_clip_folder(build_clip(**cfg), cfg, root / "clip")
    build_vae({"block_out_channels": [8, 8, 8], "norm_num_groups": 4, "latent_channels": 4,
               "layers_per_block": 1, "sample_size": 32}).save_pretrained(root / "vae")
    return root


TINY_CAPTIONS = ["data.n_train=64", "data.n_val=32", "data.batch_size=16", "debug=fdr"]


def _tiny_overrides(experiment: str, assets) -> list[str]:
    if experiment == "world_clip":
        return ["module.vision_cfg.width=8", "module.vision_cfg.head_width=8", "module.vision_cfg.layers=[1,1,1,1]",
                "module.text_cfg.width=16",
                "module.text_cfg.layers=1", "module.embed_dim=16"]
    if experiment == "world_vae":
        return ["module.vae_cfg.block_out_channels=[8,8,8]", "module.vae_cfg.norm_num_groups=4"]
    if experiment == "world_vae_decoder":
        return [f"module.init_from={assets / 'vae'}", "module.train_encoder=false"]
    return [f"module.clip_path={assets / 'clip'}", f"module.vae_path={assets / 'vae'}",
            "module.unet_cfg.block_out_channels=[16,16,16]", "module.unet_cfg.norm_num_groups=8"]


def test_world_clip_partial_captions_and_hard_negatives():
    """Training captions always name the shape; the hard negative swaps exactly one mentioned phrase."""
    import random

    from src.modules.world_clip import WorldClipModule

    random.seed(0)
    cfg = {"image_size": 32, "patch_size": 8, "layers": 1, "width": 16, "head_width": 8}
    text_cfg = {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    module = WorldClipModule(16, cfg, text_cfg, optimizer=None, partial_caption_prob=1.0)
    _, factors = fresh_renders(200, seed=5)
    batch = {k: [getattr(f, k) for f in factors] for k in VOCABULARY}
    positives, negatives = module.training_captions(batch, partial=True)
    full = [caption(f) for f in factors]
    assert sum(p != c for p, c in zip(positives, full)) > 190  # nearly all shortened
    others = [k for k in VOCABULARY if k != "shape"]
    subsets = [{"shape"} | {k for j, k in enumerate(others) if bits >> j & 1} for bits in range(2 ** len(others))]
    for f, pos, neg in zip(factors, positives, negatives):
        mentions = [m for m in subsets if caption(f, m) == pos]
        assert mentions, f"{pos!r} is not a partial caption of its scene"
        # The negative is the same partial caption of the scene with one mentioned factor changed.
        assert any(neg == caption(f.replace(**{k: v}), m) for m in mentions for k in m
                   for v in VOCABULARY[k] if v != getattr(f, k)), (pos, neg)
    shape_swaps = sum(not any(f" {c}" in f" {n}" for c in [f.shape]) for f, n in zip(factors, negatives))
    assert 60 < shape_swaps < 140  # shape_negative_prob 0.5
    positives, _ = module.training_captions(batch, partial=False)  # validation: full captions
    assert positives == full
    with pytest.raises(ValueError, match="partial_caption_prob"):
        WorldClipModule(16, cfg, text_cfg, optimizer=None, partial_caption_prob=1.5)


def test_world_clip_shape_twins_differ_from_their_scene_in_the_shape_only():
    """The text-to-image hard negative is the scene's exact counterfactual with another shape."""
    import random

    from src.modules.world_clip import WorldClipModule
    from src.world.renderer import Scene

    random.seed(1)
    module = WorldClipModule(16, {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "head_width": 8},
                             {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
                             optimizer=None, shape_twins=True)
    _, factors = fresh_renders(16, seed=21)
    seeds = list(range(100, 116))
    renderer = WorldRenderer(32)
    batch = {k: [getattr(f, k) for f in factors] for k in VOCABULARY}
    twins = (module.render_shape_twins(batch, torch.tensor(seeds)) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for f, seed, twin in zip(factors, seeds, twins):
        original = renderer.render(f, seed)
        changed = np.any(original != twin, axis=-1)
        assert changed.any()
        # Only pixels the shape owns before or after may change (whichever new shape was drawn).
        allowed = np.any([renderer.owned_mask(Scene(f, seed), "shape", c) for c in VOCABULARY["shape"]
                          if c != f.shape], axis=0)
        assert not (changed & ~allowed).any()


@pytest.mark.parametrize("experiment", ["world_clip", "world_vae", "world_vae_decoder", "world_ldm"])
def test_world_experiment_fast_dev_run(experiment, tiny_assets, tmp_path, world_cache):
    from src.training import run_training

    name = experiment.removesuffix("_decoder")
    overrides = [f"experiment={name}", *TINY_CAPTIONS, *_tiny_overrides(experiment, tiny_assets)]
    cfg = compose_config("train", overrides, tmp_path, world_cache)
    metrics, objects = run_training(cfg)
    if experiment == "world_vae_decoder":  # only the decoder trains
        vae = objects["module"].vae
        assert not any(p.requires_grad for p in vae.encoder.parameters())
        assert all(p.requires_grad for p in vae.decoder.parameters())
    loss = metrics["train/loss"]
    assert np.isfinite(loss) and loss > 0
    # fast_dev_run never exports (no weights worth keeping).
    assert not any(tmp_path.glob("world_*"))


def test_world_clip_lock_text_trains_the_image_tower_alone(tiny_assets):
    from src.modules.world_clip import WorldClipModule

    vision = {"image_size": 32, "patch_size": 8, "layers": 1, "width": 16, "head_width": 8}
    text = {"context_length": 32, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1}
    module = WorldClipModule(16, vision, text, optimizer=None, init_from=str(tiny_assets / "clip"), lock_text=True)
    model = module.model
    text_params = [model.token_embedding.weight, model.positional_embedding, model.text_projection,
                   *model.transformer.parameters(), *model.ln_final.parameters()]
    assert not any(p.requires_grad for p in text_params)
    assert all(p.requires_grad for p in model.visual.parameters())
    with pytest.raises(ValueError, match="init_from"):
        WorldClipModule(16, vision, text, optimizer=None, lock_text=True)


def test_compact_json_keeps_the_content(tmp_path):
    import json

    from src.modules.world_ldm import compact_json

    data = {"model": {"vocab": {f"tok{i}": i for i in range(50)}}, "added_tokens": [{"id": 1, "content": "<|é|>"}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False), encoding="utf-8")
    before = path.stat().st_size
    compact_json(path)
    assert json.loads(path.read_text(encoding="utf-8")) == data
    assert path.stat().st_size < before * 0.8
