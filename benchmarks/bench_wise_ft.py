"""Head training + the whole α sweep on cached backbone features vs running the backbone every epoch.

    python benchmarks/bench_wise_ft.py [--models small_cnn:32 resnet18:64] [--epochs 3] [--n-heldout 400]

For each backbone (name:input size, world images resized to it):
- `cached (cold)`: WiSE-FT head training on cached features, the cache empty at the start (features
  computed once per image), then the 21-point α sweep on validation features;
- `cached (warm)`: the same with the cache already on disk (a rerun, another seed, another α rule);
- `live`: the backbone runs every epoch (`module.cached_features=false`), and the α sweep evaluates the
  interpolated model on validation images once per α (what an implementation without features does).
Same data, same number of epochs (no early stopping), batch 8. Prints seconds and the ratios.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from src.modules.backbones import create_backbone, data_config  # noqa: E402
from src.modules.wise_ft import WiseFTModule  # noqa: E402
from src.repair.data import RepairDataModule  # noqa: E402


def build(name: str, size: int, cached: bool, cache_dir: str, world_cache: str, args) -> tuple[WiseFTModule, RepairDataModule]:
    torch.manual_seed(0)
    backbone = create_backbone(name, num_classes=8, input_size=size)
    dm = RepairDataModule(n_train=args.n_train, n_val=args.n_val, n_test=64, n_heldout=args.n_heldout,
                          edit_types=["background"], classes=None, cache_dir=world_cache,
                          data_config=data_config(backbone), batch_size=8)
    dm.prepare_data()  # render the world outside the timings (every variant reads the same arrays)
    dm.setup()
    module = WiseFTModule(backbone, 8, partial(torch.optim.Adam, lr=1e-4), test_split_names=dm.test_split_names,
                          cached_features=cached, feature_cache_dir=cache_dir if cached else None)
    return module, dm


def fit(module, dm, epochs: int) -> float:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm)  # on_fit_end runs the α sweep
    return time.perf_counter() - start


@torch.no_grad()
def naive_sweep(module: WiseFTModule, dm: RepairDataModule) -> float:
    """Evaluate the interpolated model on validation images for every α (no feature reuse)."""
    dm.use_features(None)
    start = time.perf_counter()
    module.eval()
    for a in module.alphas:
        module.set_alpha(a)
        for batch in dm.val_dataloader():
            module(batch["image"]).argmax(1)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["small_cnn:32", "resnet18:64"])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--n-val", type=int, default=256)
    p.add_argument("--n-heldout", type=int, default=256)
    args = p.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    world_cache = str(ROOT / ".cache")
    print(f"torch threads: {torch.get_num_threads()}, epochs: {args.epochs}, batch 8, alpha grid 21 points")
    print(f"| backbone | train imgs | val imgs | cached cold (s) | cached warm (s) | live train (s) | live sweep (s) | "
          f"live total / cold | live total / warm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for spec in args.models:
        name, size = spec.split(":")
        with tempfile.TemporaryDirectory() as cache:
            module, dm = build(name, int(size), True, cache, world_cache, args)
            cold = fit(module, dm, args.epochs)
            module, dm = build(name, int(size), True, cache, world_cache, args)
            warm = fit(module, dm, args.epochs)
        module, dm = build(name, int(size), False, "", world_cache, args)
        live_train = fit(module, dm, args.epochs)
        live_sweep = naive_sweep(module, dm)
        live = live_train + live_sweep
        print(f"| {name}@{size} | {len(dm.sets['train'])} | {len(dm.sets['val'])} | {cold:.1f} | {warm:.1f} | "
              f"{live_train:.1f} | {live_sweep:.1f} | {live / cold:.1f}x | {live / warm:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
