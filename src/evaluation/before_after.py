"""One page that puts two stress-test runs side by side: before and after a repair.

    python -m src.evaluation.before_after --before logs/demo/evaluate_baseline \
        --after logs/demo/evaluate_repaired --out logs/demo/before_after.html

Reads each run's `metrics.json` (written by evaluate.py) and links both full reports.
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
from pathlib import Path

_EDIT_KEY = re.compile(r"^(?P<set>[^/]+)/edit_type=(?P<edit>[^/]+)/delta_acc@1$")
_SPLIT_KEY = re.compile(r"^(?P<split>[^/]+)/acc@1$")


def load_metrics(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} an evaluate.py run folder?")
    return {k: v for k, v in json.loads(path.read_text()).items() if v is not None}


def comparison_rows(before: dict[str, float], after: dict[str, float]) -> tuple[list[tuple], list[tuple]]:
    """(split, before, after) accuracy rows and (set, edit type, before Δ, CI, after Δ, CI) rows."""
    splits = sorted({m["split"] for k in before if (m := _SPLIT_KEY.match(k))} & {m["split"] for k in after if (m := _SPLIT_KEY.match(k))})
    split_rows = [(s, before[f"{s}/acc@1"], after[f"{s}/acc@1"]) for s in splits]
    edit_rows = []
    for key in sorted(before):
        m = _EDIT_KEY.match(key)
        if m and key in after:
            ci = lambda d: (d.get(f"{key}/ci_low"), d.get(f"{key}/ci_high"))  # noqa: E731
            edit_rows.append((m["set"], m["edit"], before[key], ci(before), after[key], ci(after)))
    return split_rows, edit_rows


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def _ci(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f" <small>[{_pct(lo)}, {_pct(hi)}]</small>"


def render(before_dir: Path, after_dir: Path, out: Path, title: str = "Before and after repair") -> Path:
    before, after = load_metrics(before_dir), load_metrics(after_dir)
    split_rows, edit_rows = comparison_rows(before, after)
    if not split_rows and not edit_rows:
        raise ValueError(f"{before_dir} and {after_dir} share no metrics to compare")
    split_html = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{_pct(b)}</td><td>{_pct(a)}</td>"
        f"<td class='{'up' if a >= b else 'down'}'>{100 * (a - b):+.1f}</td></tr>" for s, b, a in split_rows)
    edit_html = "".join(
        f"<tr><td>{html.escape(s)}</td><td>{html.escape(e)}</td><td>{_pct(b)}{_ci(*bci)}</td>"
        f"<td>{_pct(a)}{_ci(*aci)}</td><td class='{'up' if a >= b else 'down'}'>{100 * (a - b):+.1f}</td></tr>"
        for s, e, b, bci, a, aci in edit_rows)
    rel = lambda d: html.escape(os.path.relpath(d / "report.html", out.parent))  # noqa: E731
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}} td:first-child,td:nth-child(2){{text-align:left}}
.up{{color:#17702a;font-weight:600}} .down{{color:#b3261e;font-weight:600}} .side{{display:flex;gap:1em}}
.side div{{flex:1}} iframe{{width:100%;height:900px;border:1px solid #ccc}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Before: <code>{html.escape(str(before_dir))}</code> &nbsp; After: <code>{html.escape(str(after_dir))}</code></p>
<h2>Accuracy per split (acc@1, %)</h2>
<table><tr><th>split</th><th>before</th><th>after</th><th>change</th></tr>{split_html}</table>
<h2>Accuracy change under each edit type (Δacc@1 vs the originals, %, 95% bootstrap CI)</h2>
<p>Closer to 0 is better: the classifier's prediction survives the edit.</p>
<table><tr><th>set</th><th>edit type</th><th>before</th><th>after</th><th>change</th></tr>{edit_html}</table>
<h2>Full reports</h2><div class="side"><div><h3>Before</h3><iframe src="{rel(before_dir)}"></iframe></div>
<div><h3>After</h3><iframe src="{rel(after_dir)}"></iframe></div></div></body></html>"""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    print(render(args.before, args.after, args.out))


if __name__ == "__main__":
    main()
