"""`make demo`: the main job on the embedded world, one step after another.

Each step is an entry-point command with a fixed output folder under logs/demo/; a step whose
`done` file exists is skipped, so a rerun only does what is missing (delete logs/demo to start over).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "logs" / "demo"


@dataclass
class Step:
    name: str
    args: list[str]
    done: Path  # the file that proves the step finished

    def run(self) -> None:
        if self.done.exists():
            print(f"[demo] {self.name}: done already ({self.done.relative_to(ROOT)})")
            return
        print(f"[demo] {self.name}: {' '.join(self.args)}", flush=True)
        start = time.time()
        env = {**os.environ, "PROJECT_ROOT": str(ROOT), "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
        subprocess.run([sys.executable, *self.args], cwd=ROOT, env=env, check=True)
        if not self.done.exists():
            raise SystemExit(f"[demo] {self.name} finished but did not write {self.done}")
        print(f"[demo] {self.name}: {time.time() - start:.0f} s", flush=True)


def steps() -> list[Step]:
    """Train -> generate counterfactuals -> stress test -> repair the weakest edit type -> test again."""
    baseline = DEMO / "baseline" / "checkpoints" / "classifier.safetensors"
    repaired = DEMO / "repair" / "checkpoints" / "classifier.safetensors"
    stress_set, repair_set = DEMO / "sets" / "lance", DEMO / "sets" / "repair"
    before, after = DEMO / "evaluate_baseline", DEMO / "evaluate_repaired"

    def evaluate(ckpt: Path, out: Path) -> list[str]:
        return ["evaluate.py", f"ckpt_path={ckpt}", f"counterfactuals=[LANCE:{stress_set}]", f"hydra.run.dir={out}"]

    return [
        Step("train the baseline classifier on the world",
             ["train.py", "experiment=baseline", f"hydra.run.dir={DEMO / 'baseline'}"], baseline),
        # Stress-test set: LANCE (the default generator, on the world mini models) on iid test scenes.
        # evaluate.py also reports the world's exact ground-truth counterfactuals as the set `oracle`.
        Step("generate LANCE counterfactuals of test images",
             ["generate.py", f"generation.output_dir={stress_set}", "generation.max_images=100",
              f"hydra.run.dir={DEMO / 'generate_lance'}"], stress_set / "manifest.parquet"),
        # Repair set: exact edits of a held-out world (another world seed), so no source is ever tested.
        # The oracle generator, because the mini models accept too few edits to train on (README).
        Step("generate counterfactuals of held-out images for the repair",
             ["generate.py", "generator=oracle", f"generation.output_dir={repair_set}", "generation.source.world_seed=1",
              "generation.max_images=400", f"hydra.run.dir={DEMO / 'generate_repair'}"], repair_set / "manifest.parquet"),
        Step("stress-test the baseline", evaluate(baseline, before), before / "metrics.json"),
        Step("repair the head on counterfactuals of the weakest edit type (WiSE-FT)",
             ["train.py", "experiment=wise_ft", f"module.classifier_path={baseline}",
              f"data.counterfactual_set={repair_set}", f"hydra.run.dir={DEMO / 'repair'}"], repaired),
        Step("stress-test the repaired classifier", evaluate(repaired, after), after / "metrics.json"),
        Step("write the before/after report",
             ["-m", "src.evaluation.before_after", "--before", str(before), "--after", str(after),
              "--out", str(DEMO / "before_after.html")], DEMO / "before_after.html"),
    ]


def main() -> None:
    DEMO.mkdir(parents=True, exist_ok=True)
    try:
        for step in steps():
            step.run()
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"[demo] step failed with exit code {e.returncode}; fix it and rerun `make demo` "
                         f"(finished steps are kept)") from None
    print(f"[demo] all steps done; open {(DEMO / 'before_after.html').relative_to(ROOT)}")


if __name__ == "__main__":
    main()
