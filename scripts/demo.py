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
    baseline = DEMO / "baseline"
    classifier = baseline / "checkpoints" / "classifier.safetensors"
    evaluation = DEMO / "evaluate_baseline"
    return [
        Step("train the baseline classifier on the world",
             ["train.py", "experiment=baseline", f"hydra.run.dir={baseline}"], classifier),
        Step("evaluate it on every world split",
             ["evaluate.py", f"ckpt_path={classifier}", "data=world", f"hydra.run.dir={evaluation}"],
             evaluation / "metrics.json"),
    ]


def main() -> None:
    DEMO.mkdir(parents=True, exist_ok=True)
    try:
        for step in steps():
            step.run()
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"[demo] step failed with exit code {e.returncode}; fix it and rerun `make demo` "
                         f"(finished steps are kept)") from None
    print(f"[demo] all steps done; outputs in {DEMO.relative_to(ROOT)}/")


if __name__ == "__main__":
    main()
