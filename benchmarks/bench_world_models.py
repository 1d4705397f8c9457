"""The world's mini models against the ground truth: LANCE editing with world_ldm, checked with world_clip,
judged by a factor probe trained on rendered images (not by world_clip).

    python benchmarks/bench_world_models.py [--sources 40] [--steps 20] [--inverters direct negative_prompt null_text ddim]

Sources are iid test scenes; each has one exact single-factor counterfactual per edit type (the world's
`counterfactual` split), so `--sources 40` gives 200 edits. Per inverter and edit type it prints:
- psnr_rec: PSNR (dB) of the decoded inversion (p2p's source sample) vs the source image;
- success: the probe reads the edited factor's new value in x' (selected candidate);
- label_kept: the probe's class head (trained on independent factors, i.e. the `ood` distribution)
  still reads the source class; label_kept_seen: the same over the edits whose source the probe
  classifies correctly (the class it saw is still seen);
- others_kept: fraction of unchanged factors the probe still reads as in the source;
- closer_to_gt: share of edits with MSE(x', ground-truth counterfactual) < MSE(x', source), and both MSEs;
- accept: acceptance rate of world_clip's consistency controller, and its precision/recall against the
  ground truth "correct edit" (success and label kept);
and the wall time per accepted counterfactual of the first inverter listed (one inversion per image,
all fractions of all edits of an image in one batched p2p sweep), extrapolated to 200, with the peak
resident memory.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.world.grammar import VOCABULARY  # noqa: E402

SPEED_TARGET_S = 600.0  # 200 accepted counterfactuals
MEMORY_TARGET_GB = 4.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())
    return 10 * np.log10(255.0**2 / max(mse, 1e-10))


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean())


def build_inverter(name: str, diffusion, guidance: float, null_inner_steps: int):
    from src.generation.inverter_ddim import DDIMInverter
    from src.generation.inverter_direct import DirectInverter
    from src.generation.inverter_negative_prompt import NegativePromptInverter
    from src.generation.inverter_null_text import NullTextInverter

    if name == "negative_prompt":
        return NegativePromptInverter(diffusion=diffusion, guidance_scale=guidance)
    if name == "null_text":
        return NullTextInverter(diffusion=diffusion, guidance_scale=guidance, num_inner_steps=null_inner_steps)
    if name == "ddim":
        return DDIMInverter(diffusion=diffusion, guidance_scale=guidance)
    if name == "direct":
        return DirectInverter(diffusion=diffusion, guidance_scale=guidance)
    raise ValueError(f"--inverters: unknown inverter {name!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sources", type=int, default=40, help="iid scenes; x5 edit types = edits per inverter")
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps")
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.4, 0.6, 0.8])
    ap.add_argument("--cross-replace", type=float, default=0.8)
    ap.add_argument("--inverters", nargs="+", default=["direct", "negative_prompt", "null_text", "ddim"],
                    help="compared side by side; the first one also gives the speed figure")
    ap.add_argument("--null-text-sources", type=int, default=8, help="null-text is slow: fewer sources")
    ap.add_argument("--null-inner-steps", type=int, default=10)
    ap.add_argument("--directional", type=float, default=0.2)
    ap.add_argument("--image", type=float, default=0.7)
    ap.add_argument("--image-text", type=float, default=0.2)
    ap.add_argument("--pipeline", default=str(ROOT / "assets/world/ldm"))
    ap.add_argument("--clip", default=str(ROOT / "assets/world/clip"))
    ap.add_argument("--probe", default=str(ROOT / "assets/world/probe/factor_probe.safetensors"),
                    help="cached factor probe; trained (and written here) when absent")
    ap.add_argument("--probe-steps", type=int, default=1500, help="training steps when the probe is not cached")
    ap.add_argument("--t2i", type=int, default=32, help="text-to-image samples judged by the probe (0 = skip)")
    ap.add_argument("--json", default=None, help="also write the table here")
    args = ap.parse_args()
    torch.manual_seed(0)

    from src.generation.consistency import ClipConsistency, pick_best
    from src.generation.diffusion import DiffusionModel
    from src.generation.editor_p2p import PromptToPromptEditor
    from src.world.dataset import WorldSpec, build_world
    from src.world.models import world_clip_encoder
    from src.world.probes import load_or_train_probe

    probe, probe_acc = load_or_train_probe(args.probe, steps=args.probe_steps)
    print("factor probe held-out accuracy:", json.dumps({k: round(v, 3) for k, v in probe_acc.items()}))

    world = build_world(WorldSpec(), ROOT / ".cache", splits=("iid", "counterfactual"))
    iid, cf = world["iid"], world["counterfactual"]
    iid_index = {r: i for i, r in enumerate(iid.records["id"])}

    diffusion = DiffusionModel.from_pretrained(args.pipeline, num_inference_steps=args.steps,
                                               config_key="--pipeline")
    editor = PromptToPromptEditor(diffusion=diffusion, guidance_scale=args.guidance,
                                  cross_replace_steps=args.cross_replace)
    consistency = ClipConsistency(world_clip_encoder(args.clip), directional=args.directional, image=args.image,
                                  image_text=args.image_text)

    t2i = text_to_image_accuracy(diffusion, probe, args.t2i, args.guidance) if args.t2i else None
    if t2i:
        print(f"text-to-image ({args.t2i} captions, guidance {args.guidance}): probe reads the captioned value "
              "per factor:", json.dumps({k: round(v, 3) for k, v in t2i.items()}))
    table: dict = {"ground_truth": ground_truth_rows(probe, consistency, iid, cf, iid_index, args.sources)}
    vae_psnr = vae_reconstruction_psnr(diffusion, iid.images[:args.sources])
    print(f"world_vae reconstruction PSNR on {args.sources} sources: {vae_psnr:.2f} dB (ceiling for inversion)")
    speed = None
    costs: dict[str, dict] = {}
    for inv_name in args.inverters:
        inverter = build_inverter(inv_name, diffusion, args.guidance, args.null_inner_steps)
        n_src = min(args.sources, args.null_text_sources) if inv_name == "null_text" else args.sources
        rows = defaultdict(list)
        start, accepted_total = time.perf_counter(), 0
        unet_inversion = unet_editing = 0
        sources = iid.records.iloc[:n_src]
        for _, src in tqdm(list(sources.iterrows()), desc=inv_name):
            src_img = iid.images[iid_index[src["id"]]]
            edits = cf.records[cf.records["source_id"] == src["id"]]
            src_seen = probe_sees_class(probe, src_img, src)
            inversion = inverter.invert(Image.fromarray(src_img), src["caption"])
            out = editor.edit(inversion, src["caption"], list(edits["caption"]), list(args.fractions))
            unet_inversion += inversion.cost.unet_evals
            unet_editing += out.cost.unet_evals
            rec = np.asarray(out.reconstruction)
            for (ei, edit), cands in zip(edits.iterrows(), out.candidates):
                verdicts = consistency.score(Image.fromarray(src_img), src["caption"], edit["caption"],
                                             [im for _, im in cands])
                best = pick_best(verdicts)
                accepted = best is not None
                # Judge the candidate the controller keeps; when it rejects all, the one it scored highest.
                pick = best if accepted else int(np.argmax([v.scores["directional_similarity"] for v in verdicts]))
                x_edit = np.asarray(cands[pick][1])
                gt = cf.images[ei]
                success, label_kept, others_kept = judge(probe, x_edit, src, edit["factor"], edit["edited_value"])
                rows[edit["edit_type"]].append({
                    "psnr_rec": psnr(rec, src_img), "success": success, "label_kept": label_kept,
                    "source_seen": src_seen,
                    "others_kept": others_kept, "mse_gt": mse(x_edit, gt), "mse_src": mse(x_edit, src_img),
                    "accepted": accepted, "correct": success and label_kept, **verdicts[pick].scores,
                })
                accepted_total += accepted
        elapsed = time.perf_counter() - start
        n_edits = sum(len(v) for v in rows.values())
        table[inv_name] = {t: summarise(v) for t, v in rows.items()}
        table[inv_name]["all"] = summarise([r for v in rows.values() for r in v])
        table[inv_name]["all"]["seconds"] = elapsed
        costs[inv_name] = {"sources": n_src, "seconds_per_image": elapsed / n_src,
                           "unet_inversion_per_image": unet_inversion / n_src,
                           "unet_editing_per_image": unet_editing / n_src}
        if inv_name == args.inverters[0]:  # the speed figure: the first inverter listed
            per_accepted = elapsed / max(accepted_total, 1)
            speed = {"edits": n_edits, "accepted": accepted_total, "seconds": elapsed,
                     "seconds_per_accepted": per_accepted, "projected_200_s": 200 * per_accepted}

    print_table(table)
    print("\ncost per source image (5 edits x fractions, one batched p2p sweep; UNet calls count a batched forward once):")
    for inv, c in costs.items():
        print(f"  {inv}: {c['unet_inversion_per_image']:.0f} UNet calls to invert + {c['unet_editing_per_image']:.0f} "
              f"to edit, {c['seconds_per_image']:.2f} s per image ({c['sources']} images)")
    print("\nmedian consistency scores (directional, image, image-text, text margin) per inverter:")
    for inv, per_type in table.items():
        a = per_type["all"]
        print(f"  {inv}: " + ", ".join(f"{a.get('median_' + k, float('nan')):.3f}" for k in SCORE_NAMES))
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    if speed:
        print(f"\nspeed ({args.inverters[0]}, {args.steps} DDIM steps, {len(args.fractions)} fractions): "
              f"{speed['accepted']}/{speed['edits']} accepted in {speed['seconds']:.0f} s -> 200 accepted in "
              f"{speed['projected_200_s']:.0f} s (target {SPEED_TARGET_S:.0f} s, ratio "
              f"{speed['projected_200_s'] / SPEED_TARGET_S:.2f})")
    print(f"peak resident memory {peak_gb:.2f} GB (target {MEMORY_TARGET_GB} GB)")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": table, "costs": costs, "speed": speed, "peak_gb": peak_gb, "vae_psnr": vae_psnr,
                                               "text_to_image": t2i,
                                               "probe_accuracy": probe_acc, "args": vars(args)}, indent=2))


def judge(probe, x_edit: np.ndarray, src, factor: str, value: str) -> tuple[bool, bool, float]:
    """(edited factor shows `value`, class kept, share of other factors kept) as the probe reads x'."""
    from src.world.probes import FACTORS

    pred = probe.predict(np.stack([x_edit]))
    success = VOCABULARY[factor][pred[factor][0]] == value
    label_kept = pred["shape"][0] == int(src["label"])
    others = [k for k in FACTORS if k not in (factor, "shape")]
    return success, label_kept, float(np.mean([VOCABULARY[k][pred[k][0]] == src[k] for k in others]))


def probe_sees_class(probe, image: np.ndarray, src) -> bool:
    """Whether the probe reads the source's class in `image` (H x W x 3 uint8)."""
    return bool(probe.predict(image[None])["shape"][0] == int(src["label"]))


def ground_truth_rows(probe, consistency, iid, cf, iid_index, n_sources: int) -> dict:
    """The probe and the consistency controller on the renderer's exact counterfactuals: the ceiling of
    every judged metric, and how often the controller accepts a perfect edit."""
    rows = defaultdict(list)
    for _, src in iid.records.iloc[:n_sources].iterrows():
        src_img = iid.images[iid_index[src["id"]]]
        src_seen = probe_sees_class(probe, src_img, src)
        for ei, edit in cf.records[cf.records["source_id"] == src["id"]].iterrows():
            success, label_kept, others_kept = judge(probe, cf.images[ei], src, edit["factor"], edit["edited_value"])
            verdict = consistency.score(Image.fromarray(src_img), src["caption"], edit["caption"],
                                        [Image.fromarray(cf.images[ei])])[0]
            rows[edit["edit_type"]].append({"psnr_rec": float("inf"), "success": success, "label_kept": label_kept,
                                            "source_seen": src_seen,
                                            "others_kept": others_kept, "mse_gt": 0.0,
                                            "mse_src": mse(cf.images[ei], src_img), "accepted": verdict.passed,
                                            "correct": success and label_kept, **verdict.scores})
    out = {t: summarise(v) for t, v in rows.items()}
    out["all"] = summarise([r for v in rows.values() for r in v])
    return out


@torch.no_grad()
def text_to_image_accuracy(diffusion, probe, n: int, guidance: float, seed: int = 0) -> dict[str, float]:
    """Sample images for random independent-factor captions; share of factors the probe reads as captioned."""
    from src.world.grammar import caption
    from src.world.probes import FACTORS, factor_targets, render_independent

    _, factors = render_independent(n, seed=seed + 777)
    g = torch.Generator().manual_seed(seed)
    cond = diffusion.encode_prompts([caption(f) for f in factors])
    uncond = diffusion.encode_prompts([""] * n)
    shape = (n, diffusion.unet.config.in_channels, *(2 * [diffusion.unet.config.sample_size]))
    latents = torch.randn(shape, generator=g) * diffusion.scheduler.init_noise_sigma
    for t in diffusion.timesteps:
        latents = diffusion.step(diffusion.guided_prediction(latents, t, cond, uncond, guidance), t, latents)
    images = np.stack([np.asarray(im) for im in diffusion.decode(latents)])
    pred, truth = probe.predict(images), factor_targets(factors)
    return {k: float((pred[k] == truth[k]).mean()) for k in FACTORS}


@torch.no_grad()
def vae_reconstruction_psnr(diffusion, images: np.ndarray) -> float:
    values = []
    for a in images:
        rec = np.asarray(diffusion.decode(diffusion.encode_image(Image.fromarray(a)))[0])
        values.append(psnr(rec, a))
    return float(np.mean(values))


SCORE_NAMES = ("directional_similarity", "image_similarity", "image_text_similarity", "text_margin")


def summarise(rows: list[dict]) -> dict:
    acc = np.array([r["accepted"] for r in rows])
    cor = np.array([r["correct"] for r in rows])
    tp = int((acc & cor).sum())
    return {
        "n": len(rows),
        "psnr_rec": float(np.mean([r["psnr_rec"] for r in rows])),
        "success": float(np.mean([r["success"] for r in rows])),
        "label_kept": float(np.mean([r["label_kept"] for r in rows])),
        # Of the edits whose source the probe classifies correctly: does it still see the class in x'?
        "label_kept_seen": float(np.mean([r["label_kept"] for r in rows if r["source_seen"]] or [np.nan])),
        "others_kept": float(np.mean([r["others_kept"] for r in rows])),
        "closer_to_gt": float(np.mean([r["mse_gt"] < r["mse_src"] for r in rows])),
        "mse_gt": float(np.mean([r["mse_gt"] for r in rows])),
        "mse_src": float(np.mean([r["mse_src"] for r in rows])),
        "accept": float(acc.mean()),
        "correct": float(cor.mean()),
        "filter_precision": tp / acc.sum() if acc.sum() else float("nan"),
        "filter_recall": tp / cor.sum() if cor.sum() else float("nan"),
        # Median consistency scores (for calibrating the controller's thresholds on world_clip).
        **{f"median_{k}": float(np.median([r[k] for r in rows])) for k in SCORE_NAMES if k in rows[0]},
    }


def print_table(table: dict) -> None:
    cols = ["n", "psnr_rec", "success", "label_kept", "label_kept_seen", "others_kept", "closer_to_gt", "mse_gt", "mse_src",
            "accept", "filter_precision", "filter_recall"]
    print("\n| inverter | edit type | " + " | ".join(cols) + " |")
    print("|" + "---|" * (len(cols) + 2))
    for inv, per_type in table.items():
        for t in ["subject", "object", "background", "adjective", "domain", "all"]:
            if t not in per_type:
                continue
            r = per_type[t]
            cells = [str(r["n"])] + [f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols[1:]]
            print(f"| {inv} | {t} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
