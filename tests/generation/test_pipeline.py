"""End to end: the world with the oracle editor, p2p on tiny models, resume after SIGKILL, shards,
bad inputs, the data module and the Hydra config."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from src.generation.captioner_ground_truth import GroundTruthCaptioner
from src.generation.consistency import ClipConsistency
from src.generation.editor_oracle import OracleEditor
from src.generation.editor_p2p import PromptToPromptEditor
from src.generation.inverter_negative_prompt import NegativePromptInverter
from src.generation.manifest import merge_sets, read_manifest, sha256_file
from src.generation.perturber_rules import RulePerturber
from src.generation.pipeline import GenerationPipeline
from src.generation.sources import ImageFolderSource, WorldSource
from src.generation.tiny_models import tiny_clip_encoder, tiny_diffusion


def _world(tmp_path, n=16):
    return WorldSource(n_train=4, n_val=4, n_test=n, cache_dir=str(tmp_path / "cache"))


def _oracle_pipeline(**kw):
    return GenerationPipeline(GroundTruthCaptioner(), RulePerturber(), editor=OracleEditor(), num_edits=3,
                              progress=False, config_hash="test", **kw)


def _check_set(root: Path, df: pd.DataFrame):
    assert df["id"].is_unique
    for _, r in df[df["image_path"].notna()].iterrows():
        path = root / r["image_path"]
        with Image.open(path) as im:
            im.load()
        assert sha256_file(path) == r["image_sha256"]


def test_world_oracle_end_to_end(tmp_path):
    src = _world(tmp_path, 8)
    df = _oracle_pipeline().run(src, tmp_path / "set")
    assert (tmp_path / "set" / "manifest.parquet").exists()
    assert len(df) == 8 * 4 and (df["edit_type"] == "reconstruction").sum() == 8
    acc = df[(df["status"] == "accepted") & (df["edit_type"] != "reconstruction")]
    assert len(acc) >= 20
    # the oracle re-render differs from the source exactly where the edited factor owns pixels
    recs = src.split.records.set_index("id")
    r = acc.iloc[0]
    rec = recs.loc[r["source_id"]]
    assert r["caption"] == rec["caption"] and r["edited_caption"] != rec["caption"]
    original = src.split.images[list(recs.index).index(r["source_id"])]
    edited = np.asarray(Image.open(tmp_path / "set" / r["image_path"]))
    assert edited.shape == original.shape and (edited != original).any()
    recon = np.asarray(Image.open(tmp_path / "set" / f"images/{r['source_id']}-recon.png"))
    assert np.array_equal(recon, original)
    _check_set(tmp_path / "set", df)

    from src.datamodules.counterfactual import CounterfactualDataModule

    dm = CounterfactualDataModule(str(tmp_path / "set"), batch_size=4)
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["label"].dtype.is_floating_point is False
    assert len(dm.records) == len(acc)


def test_p2p_end_to_end_on_tiny_models(tmp_path):
    d = tiny_diffusion(image_size=16, num_inference_steps=2)
    consistency = ClipConsistency(tiny_clip_encoder(image_size=16), directional=-1, image=-1, image_text=-1,
                                  require_closer_to_edit=False)
    pipe = GenerationPipeline(GroundTruthCaptioner(), RulePerturber(), editor=PromptToPromptEditor(d),
                              inverter=NegativePromptInverter(d), consistency=consistency, num_edits=2,
                              self_replace_fractions=(0.4, 0.8), progress=False, config_hash="p2p",
                              inversion_cache_dir=str(tmp_path / "inv"))
    df = pipe.run(_world(tmp_path, 2), tmp_path / "set")
    acc = df[(df["status"] == "accepted") & (df["edit_type"] != "reconstruction")]
    assert len(acc) >= 1 and acc["self_replace_fraction"].isin([0.4, 0.8]).all()
    assert acc["directional_similarity"].notna().all()
    assert pipe.stats.inversions == 2 and len(list((tmp_path / "inv").glob("*.safetensors"))) == 2
    # 2 inversion steps + 2 batched editing steps per image (source + 2 edits x 2 fractions in one batch)
    assert pipe.stats.unet_evals == 2 * (2 + 2)
    assert pipe.stats.edit_cost.extra["unet_samples"] == 2 * 2 * 2 * 5
    _check_set(tmp_path / "set", df)


def _slow_run(root, cache):
    class SlowOracle(OracleEditor):
        def edit_world(self, *a, **k):
            time.sleep(0.05)
            return super().edit_world(*a, **k)

    src = WorldSource(n_train=4, n_val=4, n_test=40, cache_dir=cache)
    GenerationPipeline(GroundTruthCaptioner(), RulePerturber(), editor=SlowOracle(), num_edits=3, progress=False,
                       config_hash="test").run(src, root, flush_every=1)


def test_resume_after_sigkill(tmp_path):
    root, cache = tmp_path / "set", str(tmp_path / "cache")
    _world(tmp_path, 40)  # render the split before forking
    proc = mp.get_context("fork").Process(target=_slow_run, args=(root, cache))
    proc.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        if (root / "parts").exists() and len(list((root / "parts").glob("*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not (root / "manifest.parquet").exists(), "the run must be killed part way"
    before = read_manifest(root)
    assert 0 < before["source_id"].nunique() < 40
    pipe = _oracle_pipeline()
    df = pipe.run(WorldSource(n_train=4, n_val=4, n_test=40, cache_dir=cache), root)
    assert pipe.stats.skipped == before["source_id"].nunique()
    assert df["source_id"].nunique() == 40 and len(df) == 40 * 4
    _check_set(root, df)


def test_shards_partition_and_merge(tmp_path):
    src = _world(tmp_path, 10)
    a = _oracle_pipeline().run(src, tmp_path / "a", shard=0, num_shards=2)
    b = _oracle_pipeline().run(src, tmp_path / "b", shard=1, num_shards=2)
    assert set(a["source_id"]).isdisjoint(b["source_id"])
    merged = merge_sets([tmp_path / "a", tmp_path / "b"], tmp_path / "m")
    assert merged["source_id"].nunique() == 10
    _check_set(tmp_path / "m", merged)
    # the same shards into one folder: the last finalize holds every row
    _oracle_pipeline().run(src, tmp_path / "one", shard=0, num_shards=2)
    both = _oracle_pipeline().run(src, tmp_path / "one", shard=1, num_shards=2)
    assert both["source_id"].nunique() == 10


def test_bad_inputs_become_rejected_rows(tmp_path):
    root = tmp_path / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(root / "cat" / "ok.png")
    Image.new("I;16", (32, 32), 1000).save(root / "cat" / "wide.png")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    pd.DataFrame({"path": ["cat/ok.png", "cat/wide.png"], "caption": ["a red square on a wooden floor", ""]}).to_csv(
        root / "captions.csv", index=False)

    class Garbage:
        name = "garbage"

        def perturb(self, *a, **k):
            raise ValueError("unparseable perturber output: '###'")

    pipe = GenerationPipeline(GroundTruthCaptioner(), Garbage(), editor=OracleEditor(), num_edits=2,
                              progress=False, config_hash="bad")
    df = pipe.run(ImageFolderSource(str(root)), tmp_path / "set")
    reasons = dict(zip(df["id"], df["reason"]))
    assert "unreadable image" in reasons["dog__broken-source"]
    assert reasons["cat__wide-source"] == "empty caption"
    assert "unparseable" in reasons["cat__ok-00"]
    assert (df["status"] == "rejected").sum() == 4


def test_generate_config_composes_and_runs(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.generation.task import run_generation

    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("generate", overrides=[
            f"paths.root_dir={tmp_path}", "generator=oracle", "generation.name=t", "generation.max_images=3",
            "generation.progress=false",
            "generation.source.n_train=4", "generation.source.n_val=4", "generation.source.n_test=8",
            "generation/edit_filter=none"])
    GlobalHydra.instance().clear()
    from src.config_schema import check_targets

    check_targets(cfg)
    metrics, objs = run_generation(cfg)
    assert metrics["generate/sources"] == 3 and Path(objs["output_dir"], "manifest.parquet").exists()
    for combo in (["generation/diffusion=tiny", "generation/inverter=null_text", "generation/editor=p2p",
                   "generation/consistency=tiny_clip", "generation/perturber=random", "generation/captioner=blip2"],):
        with initialize_config_dir(str(conf), version_base="1.3"):
            c = compose("generate", overrides=[f"paths.root_dir={tmp_path}", "~generator", *combo])
        GlobalHydra.instance().clear()
        check_targets(c)


def test_default_generator_is_lance_on_the_world_mini_models(tmp_path):
    """`python generate.py` with no arguments: inversion + prompt-to-prompt + CLIP checks on world models."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from src.generation.task import run_generation

    root = Path(__file__).resolve().parents[2]
    with initialize_config_dir(str(root / "conf"), version_base="1.3"):
        cfg = compose("generate", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.assets_dir={root / 'assets'}", "generation.max_images=2",
            "generation.progress=false", "generation.diffusion.num_inference_steps=5", "generation.name=t"])
    GlobalHydra.instance().clear()
    assert cfg.generation.editor._target_.endswith("PromptToPromptEditor")
    metrics, objs = run_generation(cfg)
    assert metrics["generate/sources"] == 2
    assert metrics["generate/unet_evals"] > 0  # the real algorithm ran: inversion and editing
    manifest = pd.read_parquet(Path(objs["output_dir"]) / "manifest.parquet")
    recon = manifest[manifest["edit_type"] == "reconstruction"]
    assert len(recon) == 2 and (manifest["status"].isin(["accepted", "rejected"])).all()
