"""The `llm` perturber: a causal language model (optionally with a LoRA adapter) that edits one factor of
a caption, as LANCE's fine-tuned LLaMA-7B did.

This file also owns the prompt, so training (`src/datamodules/caption_edits.py`) and generation format
requests identically, and the from_pretrained wrappers that fail fast offline naming the config key.

Two prompt styles:
- `finetuned`: the instruction prompt of the edit type, the caption as input, one edited caption as the
  response (what `module=perturber_lora` trains). `num_edits` edits come from sampling several responses.
- `teacher`: an instruct model asked, with a worked example, for a numbered list of edits (how LANCE
  collected its training edits from GPT-3.5); used by the caption-edit builder.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from src.generation.edit_parsing import EditScore, check_edit, normalize, parse_edits, score_edit, summarize_scores
from src.generation.types import EDIT_TYPES, CaptionEdit, Rejection

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- prompt
EDIT_INSTRUCTIONS: dict[str, str] = {
    "subject": "Edit the image caption by changing only its subject: replace the person, animal or figure "
    "that the scene is about with a different one. Change one phrase and keep every other word.",
    "object": "Edit the image caption by changing only one object in the scene: replace a thing that is "
    "present with a different thing. Change one phrase and keep every other word.",
    "background": "Edit the image caption by changing only the background: the place, the surface, the "
    "weather or the time of day. Change one phrase and keep every other word.",
    "adjective": "Edit the image caption by changing only one adjective: a colour, size, pattern, material "
    "or texture. Change one phrase and keep every other word.",
    "domain": "Edit the image caption by changing only the domain of the image: photo, sketch, painting, "
    "cartoon, sculpture or a similar medium or style. Change one phrase and keep every other word.",
}

PROMPT_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{caption}\n\n### Response:\n"
)

_TEACHER_SYSTEM = (
    "You edit image captions for counterfactual testing of image classifiers. Each edit changes exactly one "
    "phrase of the caption, of the requested kind, and leaves everything else word for word."
)
_TEACHER_EXAMPLE = (
    "Caption: a man riding a brown horse on a beach\nKind of edit: background\nNumber of edits: 3",
    "1. a man riding a brown horse in a snowy forest\n2. a man riding a brown horse on a city street\n"
    "3. a man riding a brown horse in a desert at sunset",
)


def _label_clause(label: str | None) -> str:
    return f" Do not change the word '{label}'." if label else ""


def build_prompt(caption: str, edit_type: str, label: str | None = None) -> str:
    """The fine-tuning prompt of one request; the response is one edited caption."""
    if edit_type not in EDIT_INSTRUCTIONS:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {tuple(EDIT_INSTRUCTIONS)}")
    return PROMPT_TEMPLATE.format(instruction=EDIT_INSTRUCTIONS[edit_type] + _label_clause(label), caption=caption.strip())


def build_teacher_messages(caption: str, edit_type: str, num_edits: int, label: str | None = None) -> list[dict]:
    """Chat messages asking an instruct model for `num_edits` numbered edits."""
    if edit_type not in EDIT_INSTRUCTIONS:
        raise ValueError(f"unknown edit type {edit_type!r}; expected one of {tuple(EDIT_INSTRUCTIONS)}")
    system = f"{_TEACHER_SYSTEM} {EDIT_INSTRUCTIONS[edit_type]}{_label_clause(label)} Answer with a numbered list only."
    user = f"Caption: {caption.strip()}\nKind of edit: {edit_type}\nNumber of edits: {num_edits}"
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": _TEACHER_EXAMPLE[0]},
        {"role": "assistant", "content": _TEACHER_EXAMPLE[1]},
        {"role": "user", "content": user},
    ]


# ------------------------------------------------------------------------------------------ loading
def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in {"1", "true", "yes", "on"} for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def from_pretrained_or_fail(loader: Callable[..., Any], name: str, key: str, **kwargs: Any) -> Any:
    """`loader(name)` for a local folder or a hub id; a clear error naming `key` when that cannot work.

    Hub ids are tried from the local cache first, so an offline machine fails at once instead of retrying.
    """
    path = Path(str(name)).expanduser()
    if path.is_dir():
        return loader(str(path), **kwargs)
    if str(name).startswith(("/", "./", "../", "~")) or path.exists():
        raise FileNotFoundError(f"{key}={name!r} is not a folder holding a Hugging Face model")
    try:
        return loader(name, local_files_only=True, **kwargs)
    except Exception as cached_error:  # noqa: BLE001 -- any failure here means "not in the cache"
        if _offline():
            raise RuntimeError(
                f"cannot load {name!r} (config key {key}): HF_HUB_OFFLINE is set and it is not in the local "
                f"Hugging Face cache. Download it where there is network (`hf download {name}`) and set "
                f"{key}=/path/to/the/local/folder"
            ) from cached_error
    try:
        return loader(name, **kwargs)
    except Exception as error:  # noqa: BLE001
        raise RuntimeError(
            f"cannot load {name!r} (config key {key}) from the Hugging Face hub: {error}. Without network, set "
            f"{key}=/path/to/the/local/folder"
        ) from error


def prepare_tokenizer(tokenizer: Any) -> Any:
    """Give a tokenizer the end and padding tokens a causal LM needs (LLaMA has no pad token, BERT no eos)."""
    if tokenizer.eos_token is None:
        fallback = tokenizer.sep_token or tokenizer.pad_token
        if fallback is None:
            raise ValueError("the tokenizer has no eos, sep or pad token to end a response with")
        tokenizer.eos_token = fallback
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name: str, key: str = "module.model_id") -> Any:
    from transformers import AutoTokenizer

    return prepare_tokenizer(from_pretrained_or_fail(AutoTokenizer.from_pretrained, name, key))


def _torch_dtype(dtype: str | torch.dtype | None) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    return getattr(torch, dtype)


def load_causal_lm(name: str, key: str = "module.model_id", dtype: str | None = "auto", **kwargs: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return from_pretrained_or_fail(AutoModelForCausalLM.from_pretrained, name, key, dtype=_torch_dtype(dtype), **kwargs)


def load_adapter(model: torch.nn.Module, adapter_path: str, key: str, *, trainable: bool = False) -> torch.nn.Module:
    """Wrap `model` with the LoRA adapter saved in the folder `adapter_path` (peft format, safetensors)."""
    from peft import PeftModel

    path = Path(adapter_path).expanduser()
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{key}={adapter_path!r}: no adapter_config.json there (expected a saved LoRA adapter)")
    return PeftModel.from_pretrained(model, str(path), is_trainable=trainable)


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt: the BOS token (if the tokenizer has one and the text lacks it), then the text.
    Training and generation both use this, so the model sees the same prefix in both."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token)):
        ids = [bos, *ids]
    return ids


# --------------------------------------------------------------------------------------- generation
@dataclass(frozen=True)
class Generation:
    """One sampled continuation; `truncated` when it hit max_new_tokens before the end token."""

    text: str
    truncated: bool


class LLMPerturber:
    """Caption perturber backed by a causal LM (+ LoRA adapter). Implements the `Perturber` protocol.

    Build it from config with `model_id` (hub id or folder) and `adapter_path`, or hand it a loaded
    `model`/`tokenizer` (the LoRA module does this to measure edit success during validation).
    """

    name = "llm"

    def __init__(
        self,
        model_id: str | None = None,
        adapter_path: str | None = None,
        *,
        model: torch.nn.Module | None = None,
        tokenizer: Any = None,
        prompt_style: str = "finetuned",
        max_new_tokens: int = 64,
        do_sample: bool = True,
        temperature: float = 0.7,
        top_p: float = 0.9,
        top_k: int = 0,
        repetition_penalty: float = 1.0,
        num_beams: int = 1,
        oversample: int = 2,
        dtype: str | None = "auto",
        device: str | None = None,
        config_key: str = "generation.perturber",
    ) -> None:
        if prompt_style not in ("finetuned", "teacher"):
            raise ValueError(f"{config_key}.prompt_style must be 'finetuned' or 'teacher', got {prompt_style!r}")
        if model is None or tokenizer is None:
            if not model_id:
                raise ValueError(f"{config_key}.model_id is required (a hub id or a local folder)")
        self.model_id = model_id or getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory"
        self.tokenizer = prepare_tokenizer(tokenizer if tokenizer is not None else load_tokenizer(model_id, f"{config_key}.model_id"))
        if model is None:
            model = load_causal_lm(model_id, f"{config_key}.model_id", dtype=dtype)
            if adapter_path:
                model = load_adapter(model, adapter_path, f"{config_key}.adapter_path")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device is not None:
            model = model.to(device)
        self.model = model
        self.adapter_path = adapter_path
        self.prompt_style = prompt_style
        self.max_new_tokens = max_new_tokens
        self.do_sample = do_sample
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.num_beams = num_beams
        self.oversample = max(1, oversample)
        adapter = f"+{Path(adapter_path).name}" if adapter_path else ""
        self.source = f"llm:{self.model_id}{adapter}"

    # -- prompts
    def prompt(self, caption: str, edit_type: str, label: str | None = None, num_edits: int = 1) -> str:
        if self.prompt_style == "finetuned":
            return build_prompt(caption, edit_type, label)
        messages = build_teacher_messages(caption, edit_type, num_edits, label)
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        turns = [f"{m['role'].upper()}: {m['content']}" for m in messages]
        return "\n\n".join(turns) + "\n\nASSISTANT:"

    # -- sampling
    @torch.no_grad()
    def generate(self, prompts: Sequence[str], num_return_sequences: int = 1, seed: int = 0) -> list[list[Generation]]:
        """`num_return_sequences` continuations of each prompt (batched, left-padded)."""
        tok, model = self.tokenizer, self.model
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        rows = [encode_prompt(tok, p) for p in prompts]
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):  # left padding: every prompt ends where generation starts
            input_ids[i, width - len(r) :] = torch.tensor(r)
            attention_mask[i, width - len(r) :] = 1
        enc = {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device)}
        kwargs: dict[str, Any] = dict(
            max_new_tokens=self.max_new_tokens,
            num_return_sequences=num_return_sequences,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            repetition_penalty=self.repetition_penalty,
        )
        if self.do_sample:
            kwargs.update(do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, num_beams=self.num_beams)
        else:  # several greedy answers are the same answer: use beams
            kwargs.update(do_sample=False, num_beams=max(self.num_beams, num_return_sequences))
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # reproducible per call, without touching global RNG state
            torch.manual_seed(seed)
            out = model.generate(**enc, **kwargs)
        if was_training:
            model.train()
        new = out[:, enc["input_ids"].shape[1] :]
        results: list[list[Generation]] = []
        for i in range(len(prompts)):
            row = []
            for j in range(num_return_sequences):
                ids = new[i * num_return_sequences + j]
                finished = bool((ids == tok.eos_token_id).any())
                text = tok.decode(ids, skip_special_tokens=True)
                row.append(Generation(text=text, truncated=not finished and ids.numel() >= self.max_new_tokens))
            results.append(row)
        return results

    # -- the Perturber protocol
    def perturb(
        self, caption: str, edit_type: str, *, label: str | None = None, num_edits: int = 1, seed: int = 0
    ) -> list[CaptionEdit | Rejection]:
        if edit_type not in EDIT_TYPES:
            raise ValueError(f"unknown edit type {edit_type!r}; expected one of {EDIT_TYPES}")
        n_candidates = num_edits * self.oversample
        if self.prompt_style == "finetuned":
            gens = self.generate([self.prompt(caption, edit_type, label)], n_candidates, seed)[0]
        else:
            gens = self.generate([self.prompt(caption, edit_type, label, n_candidates)], 1, seed)[0]
        return self.select(caption, edit_type, gens, label=label, num_edits=num_edits)

    def select(
        self, caption: str, edit_type: str, gens: Sequence[Generation], *, label: str | None, num_edits: int
    ) -> list[CaptionEdit | Rejection]:
        """Parse and check generated text; the first `num_edits` good edits, padded with rejections."""
        accepted: list[CaptionEdit] = []
        rejected: list[Rejection] = []
        seen: set[str] = set()
        for gen in gens:
            candidates = parse_edits(gen.text, caption, truncated=gen.truncated)
            if not candidates:
                reason = "output truncated before an edit was complete" if gen.truncated else "no caption found in the output"
                rejected.append(Rejection(edit_type, caption, reason, raw_output=gen.text))
            for cand in candidates:
                key = normalize(cand)
                if key in seen:
                    rejected.append(Rejection(edit_type, caption, "duplicate of an earlier edit", gen.text, cand))
                    continue
                seen.add(key)
                check = check_edit(caption, cand, label=label)
                if check.ok:
                    accepted.append(
                        CaptionEdit(edit_type, caption, cand, check.original_words, check.edited_words, source=self.source)
                    )
                else:
                    rejected.append(Rejection(edit_type, caption, check.reason, gen.text, cand))
        results: list[CaptionEdit | Rejection] = list(accepted[:num_edits])
        for r in rejected:
            if len(results) >= num_edits:
                break
            results.append(r)
        while len(results) < num_edits:
            results.append(Rejection(edit_type, caption, "the model produced fewer candidates than requested"))
        return results


def evaluate_edit_success(
    perturber: LLMPerturber, records: Sequence[dict], *, batch_size: int = 8, seed: int = 0, progress: bool = True
) -> tuple[dict[str, float], list[EditScore]]:
    """LANCE's perturber edit success on held-out records {caption, edit_type, label?, type_phrases?}:
    the share of outputs that parse, change exactly one phrase of the requested type and avoid the label.
    One output per record (its first parsed candidate)."""
    scores: list[EditScore] = []
    chunks = range(0, len(records), batch_size)
    for start in tqdm(chunks, desc="edit success", disable=not progress or len(chunks) < 2):
        batch = records[start : start + batch_size]
        prompts = [perturber.prompt(r["caption"], r["edit_type"], r.get("label"), 1) for r in batch]
        gens = perturber.generate(prompts, 1, seed + start)
        for rec, (gen,) in zip(batch, gens):
            cands = parse_edits(gen.text, rec["caption"], truncated=gen.truncated)
            scores.append(
                score_edit(rec["caption"], cands[0] if cands else None, label=rec.get("label"), type_phrases=rec.get("type_phrases"))
            )
    return summarize_scores(scores), scores
