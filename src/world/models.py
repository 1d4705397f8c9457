"""Loading the world's committed mini models through the same code paths as hub models, and turning
world_clip's text tower into the diffusers-style text encoder the latent diffusion model is conditioned on.

- `load_world_clip(path)`: `open_clip.create_model_and_transforms("local-dir:<path>")` + its tokenizer.
- `load_world_pipeline(path)`: `StableDiffusionPipeline.from_pretrained(<path>)` (unet, vae, text_encoder,
  tokenizer, scheduler subfolders, safetensors).
- `text_encoder_from_open_clip(model)`: a `transformers.CLIPTextModel` with world_clip's text weights
  (per-token hidden states equal open_clip's `ln_final` output), and `clip_tokenizer(max_length)`: the
  `CLIPTokenizer` whose ids equal open_clip's.
"""
from __future__ import annotations

from pathlib import Path

import torch

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "world"
WORLD_CLIP_PATH = ASSETS / "clip"
# The VAE lives once, inside the pipeline folder (a standalone copy would push the assets past 50 MB).
WORLD_VAE_PATH = ASSETS / "ldm" / "vae"
WORLD_PIPELINE_PATH = ASSETS / "ldm"


def _require_folder(path: str | Path, needed: str, what: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / needed).is_file():
        raise FileNotFoundError(
            f"{what}: {folder / needed} not found. The world's mini models live in assets/world/ "
            f"(rebuild them with `python train.py experiment=world_clip|world_vae|world_ldm`, see assets/world/README.md)")
    return folder


def load_world_clip(path: str | Path = WORLD_CLIP_PATH, device: str = "cpu"):
    """(model, tokenizer, preprocess) of world_clip, loaded by open_clip's `local-dir:` schema."""
    import open_clip

    folder = _require_folder(path, "open_clip_config.json", "world_clip")
    name = f"local-dir:{folder.resolve()}"
    model, _, preprocess = open_clip.create_model_and_transforms(name, device=device)
    return model.eval(), open_clip.get_tokenizer(name), preprocess


def world_clip_encoder(path: str | Path = WORLD_CLIP_PATH, device: str = "cpu"):
    """world_clip behind `src.generation.clip_model.ClipEncoder` (captioner, consistency checks)."""
    from src.generation.clip_model import ClipEncoder

    folder = _require_folder(path, "open_clip_config.json", "world_clip")
    return ClipEncoder(model_name=f"local-dir:{folder.resolve()}", pretrained=None, device=device)


def class_prompts() -> dict[str, list[str]]:
    """Zero-shot prompts per class: 'a {shape}' and 'a {domain} of a {shape}' for every domain of the grammar
    (CLIP's template ensembling, with the world's own caption phrases as templates).

    world_clip trains on partial captions too ('a star', 'a sketch of a star at night'), so short prompts
    are in its distribution. `python benchmarks/bench_world_clip.py` (512 fresh renders, committed model):
    this ensemble 0.922, 'a {shape}' alone 0.916, 32 full captions per class with random other factors 0.861.
    """
    from src.world.grammar import CLASSES, DOMAINS, Factors, caption

    out = {}
    for shape in CLASSES:
        f = Factors(shape=shape, colour="red", pattern="plain", size="small", background="grass", weather="clear",
                    domain="photo", object="tree", subject="person")
        out[shape] = [caption(f, {"shape"})] + [caption(f.replace(domain=d), {"shape", "domain"}) for d in DOMAINS]
    return out


@torch.no_grad()
def zero_shot_weights(model, tokenizer, prompts: dict[str, list[str]] | None = None) -> torch.Tensor:
    """(num_classes x embed_dim) unit-norm class embeddings of an open_clip model: the mean of each class's
    prompt embeddings (`prompts`, class name -> prompts; default `class_prompts()`)."""
    import torch.nn.functional as F

    rows = []
    device = next(model.parameters()).device
    for prompts in (prompts or class_prompts()).values():
        f = F.normalize(model.encode_text(tokenizer(prompts).to(device)).float(), dim=-1)
        rows.append(F.normalize(f.mean(0), dim=-1))
    return torch.stack(rows)


def load_world_pipeline(path: str | Path = WORLD_PIPELINE_PATH, device: str = "cpu"):
    """The world's latent diffusion model as a `diffusers.StableDiffusionPipeline`."""
    from diffusers import StableDiffusionPipeline

    folder = _require_folder(path, "model_index.json", "world_ldm")
    pipe = StableDiffusionPipeline.from_pretrained(str(folder), safety_checker=None, requires_safety_checker=False)
    return pipe.to(device)


def world_diffusion(model_id: str | Path = WORLD_PIPELINE_PATH, num_inference_steps: int = 20, device: str = "cpu",
                    dtype: str = "float32"):
    """world_ldm as the generation engine's `DiffusionModel` (a plain function, so config checks can import it)."""
    from src.generation.diffusion import DiffusionModel

    return DiffusionModel.from_pretrained(str(model_id), num_inference_steps=num_inference_steps, device=device,
                                          dtype=dtype, config_key="generation.diffusion.model_id")


def clip_tokenizer(max_length: int):
    """`transformers.CLIPTokenizer` over open_clip's bundled BPE vocabulary (ids equal open_clip's)."""
    from transformers import CLIPTokenizer

    from src.generation.tiny_models import clip_tokenizer_folder

    return CLIPTokenizer.from_pretrained(clip_tokenizer_folder(), model_max_length=max_length)


def text_encoder_from_open_clip(model) -> "torch.nn.Module":
    """A `CLIPTextModel` carrying an open_clip CLIP's text transformer (weights copied, then frozen use).

    open_clip fuses q/k/v into `in_proj_weight`; the rest maps one to one. open_clip's GELU is exact
    (`quick_gelu=False`), so the HF config uses `hidden_act="gelu"`.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = model.token_embedding.weight
    blocks = model.transformer.resblocks
    width = tok.shape[1]
    heads = blocks[0].attn.num_heads
    config = CLIPTextConfig(
        vocab_size=tok.shape[0], hidden_size=width, intermediate_size=blocks[0].mlp.c_fc.out_features,
        num_hidden_layers=len(blocks), num_attention_heads=heads,
        max_position_embeddings=model.positional_embedding.shape[0], hidden_act="gelu", layer_norm_eps=1e-5,
        projection_dim=model.text_projection.shape[1] if model.text_projection is not None else width,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
    enc = CLIPTextModel(config)
    sd = {"text_model.embeddings.token_embedding.weight": tok,
          "text_model.embeddings.position_embedding.weight": model.positional_embedding,
          "text_model.final_layer_norm.weight": model.ln_final.weight,
          "text_model.final_layer_norm.bias": model.ln_final.bias}
    for i, b in enumerate(blocks):
        p = f"text_model.encoder.layers.{i}."
        q, k, v = b.attn.in_proj_weight.chunk(3)
        qb, kb, vb = b.attn.in_proj_bias.chunk(3)
        sd |= {p + "self_attn.q_proj.weight": q, p + "self_attn.q_proj.bias": qb,
               p + "self_attn.k_proj.weight": k, p + "self_attn.k_proj.bias": kb,
               p + "self_attn.v_proj.weight": v, p + "self_attn.v_proj.bias": vb,
               p + "self_attn.out_proj.weight": b.attn.out_proj.weight, p + "self_attn.out_proj.bias": b.attn.out_proj.bias,
               p + "layer_norm1.weight": b.ln_1.weight, p + "layer_norm1.bias": b.ln_1.bias,
               p + "layer_norm2.weight": b.ln_2.weight, p + "layer_norm2.bias": b.ln_2.bias,
               p + "mlp.fc1.weight": b.mlp.c_fc.weight, p + "mlp.fc1.bias": b.mlp.c_fc.bias,
               p + "mlp.fc2.weight": b.mlp.c_proj.weight, p + "mlp.fc2.bias": b.mlp.c_proj.bias}
    # transformers' state-dict keys carry a `text_model.` prefix in some versions and not in others.
    own = set(enc.state_dict())
    sd = {(k if k in own else k.removeprefix("text_model.")): v.detach().clone() for k, v in sd.items()}
    missing, unexpected = enc.load_state_dict(sd, strict=False)
    missing = [m for m in missing if "position_ids" not in m]
    if missing or unexpected:
        raise RuntimeError(f"open_clip -> CLIPTextModel: missing {missing}, unexpected {unexpected}")
    return enc.eval()
