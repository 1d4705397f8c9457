"""Tiny randomly initialised models built in code (diffusers-style), for smoke runs, tests and the
benchmark: a tiny latent or pixel-space text-to-image model, a tiny open_clip CLIP and a tiny masked LM.
Their outputs are meaningless; they exercise every code path offline in seconds.

The CLIP tokenizer is the real one: its vocabulary is written from the BPE file bundled with open_clip,
so ids equal open_clip's."""
from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)
def clip_tokenizer_folder() -> str:
    """A folder with vocab.json + merges.txt for `transformers.CLIPTokenizer` (49,408 tokens)."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    folder = Path(tempfile.gettempdir()) / "counterfactory-clip-tokenizer"
    if (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
        return str(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    _ = open_clip  # the BPE file ships with open_clip
    tmp_v, tmp_m = folder / "vocab.json.tmp", folder / "merges.txt.tmp"
    tmp_v.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    tmp_m.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tmp_v.replace(folder / "vocab.json")
    tmp_m.replace(folder / "merges.txt")
    return str(folder)


def clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer_folder(), model_max_length=max_length)


def tiny_diffusion(latent: bool = True, prediction_type: str = "epsilon", image_size: int = 32,
                   num_inference_steps: int = 10, seed: int = 0, max_length: int = 77, device: str = "cpu"):
    """A tiny SD-style `DiffusionModel` (random weights). latent=False: pixel-space UNet, no VAE."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from src.generation.diffusion import DiffusionModel

    torch.manual_seed(seed)
    vae = None
    if latent:
        vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            norm_num_groups=32, layers_per_block=1, sample_size=image_size)
    unet = UNet2DConditionModel(
        sample_size=image_size // 2 if latent else image_size, in_channels=4 if latent else 3,
        out_channels=4 if latent else 3, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=37,
                                                num_attention_heads=4, num_hidden_layers=2,
                                                max_position_embeddings=max_length, bos_token_id=49406,
                                                eos_token_id=49407, pad_token_id=49407))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)
    return DiffusionModel(unet, text_encoder, clip_tokenizer(max_length), scheduler, vae=vae,
                          num_inference_steps=num_inference_steps, image_size=image_size, device=device,
                          model_id=f"tiny-{'latent' if latent else 'pixel'}-{prediction_type}-seed{seed}")


def tiny_open_clip(seed: int = 0, image_size: int = 32):
    """(model, preprocess-free image size, tokenizer) of a tiny open_clip CLIP with random weights."""
    import open_clip
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(embed_dim=32,
                 vision_cfg={"image_size": image_size, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2})
    return model.eval(), open_clip.get_tokenizer("ViT-B-32")


def tiny_masked_lm(words: list[str], seed: int = 0, folder: str | None = None):
    """(BertForMaskedLM, BertTokenizer) over a whole-word vocabulary `words`."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder = Path(folder or tempfile.mkdtemp(prefix="tiny-mlm-"))
    folder.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = special + sorted(set(w.lower() for w in words) - set(special))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizer.from_pretrained(str(folder))  # transformers 5 ignores vocab_file= in the constructor
    torch.manual_seed(seed)
    model = BertForMaskedLM(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                       num_attention_heads=2, intermediate_size=37, max_position_embeddings=128))
    return model.eval(), tok


def tiny_clip_encoder(seed: int = 0, image_size: int = 32, device: str = "cpu"):
    """A `ClipEncoder` around `tiny_open_clip` (random weights: scores are meaningless)."""
    from src.generation.clip_model import ClipEncoder

    model, tokenizer = tiny_open_clip(seed, image_size)
    enc = ClipEncoder(model=model, tokenizer=tokenizer, image_size=image_size, device=device)
    enc.model_id = f"tiny-open-clip-seed{seed}"
    return enc
