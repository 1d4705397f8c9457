"""A self-contained HTML report (inline CSS, SVG charts, base64 images; no scripts, no network):
summary shaped like LANCE Table 2, sensitivity per edit type with CI error bars, per-class charts,
image pairs (original | counterfactual, edited words highlighted, top predictions with the true class
marked), cluster insights, split metrics, and which feature extractors were used."""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
from PIL import Image

SECTIONS = ("summary", "edit-types", "classes", "examples", "insights", "splits", "about")

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1280px;color:#222;padding:0 16px}
h1{font-size:24px;margin:0 0 4px} h2{font-size:19px;border-bottom:2px solid #e3e3e3;padding-bottom:4px;margin-top:32px}
h3{font-size:16px;margin:18px 0 6px} .muted{color:#777} table{border-collapse:collapse;margin:8px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right} th{background:#f4f6f8} td:first-child,th:first-child{text-align:left}
.neg{color:#b3261e;font-weight:600} .pos{color:#1b7f3b} .ci{color:#888;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:12px} .pair{border:1px solid #ddd;border-radius:6px;padding:8px;width:300px;background:#fafafa}
.pair .imgs{display:flex;gap:6px} .pair figure{margin:0;text-align:center;font-size:11px}
.pair img{width:140px;height:140px;image-rendering:pixelated;border:1px solid #ccc}
.cap{font-size:12px;margin:6px 0} del{background:#fde2e1;color:#b3261e} ins{background:#d8f5dd;color:#1b7f3b;text-decoration:none;font-weight:600}
ol.preds{margin:2px 0;padding-left:18px;font-size:12px;text-align:left} .true{font-weight:700;color:#1b7f3b}
.cluster{border-left:4px solid #6a8caf;padding:4px 10px;margin:6px 0;background:#f7f9fb}
.cluster img{width:56px;height:56px;image-rendering:pixelated;border:1px solid #ccc;margin-right:2px}
.charts{display:flex;flex-wrap:wrap;gap:18px}
nav a{margin-right:12px}
"""


def _fmt(v, pct: bool = True, signed: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    v = float(v)
    s = f"{v * 100:+.2f}" if signed and pct else f"{v * 100:.2f}" if pct else f"{v:+.3f}" if signed else f"{v:.3f}"
    return s


def _delta_cell(e, pct: bool = True) -> str:
    if e is None:
        return "<td>—</td>"
    cls = "neg" if e.high < 0 else ("pos" if e.low > 0 else "")
    return (f'<td class="{cls}">{_fmt(e.value, pct, True)} <span class="ci">[{_fmt(e.low, pct, True)}, '
            f'{_fmt(e.high, pct, True)}]</span></td>')


def _png(image: np.ndarray, max_side: int = 160) -> str:
    im = Image.fromarray(image)
    if max(im.size) > max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def bar_chart(title: str, labels: list[str], values: list[float], lows: list[float], highs: list[float],
              unit: str = "", width: int = 560, zero_line: bool = True) -> str:
    """Horizontal bars with CI whiskers, as inline SVG."""
    row, left, right, top = 24, 150, 70, 28
    h = top + row * len(labels) + 24
    finite = [x for x in list(values) + list(lows) + list(highs) if x is not None and math.isfinite(x)]
    lo, hi = min(finite + [0.0]), max(finite + [0.0])
    span = (hi - lo) or 1.0
    lo, hi = lo - 0.05 * span, hi + 0.05 * span
    sx = lambda v: left + (v - lo) / (hi - lo) * (width - left - right)  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-size="13" font-weight="600">{html.escape(title)}</text>']
    if zero_line:
        parts.append(f'<line x1="{sx(0):.1f}" y1="{top - 4}" x2="{sx(0):.1f}" y2="{h - 20}" stroke="#555" stroke-width="1"/>')
    for i, (lab, v, l, u) in enumerate(zip(labels, values, lows, highs)):
        y = top + i * row
        parts.append(f'<text x="{left - 6}" y="{y + 15}" font-size="12" text-anchor="end">{html.escape(lab)}</text>')
        if v is None or not math.isfinite(v):
            continue
        x0, x1 = sorted((sx(0), sx(v)))
        colour = "#c0504d" if v < 0 else "#4f81bd"
        parts.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{max(x1 - x0, 1):.1f}" height="{row - 8}" fill="{colour}" opacity="0.85"/>')
        if l is not None and u is not None and math.isfinite(l) and math.isfinite(u):
            ym = y + row / 2
            parts.append(f'<line x1="{sx(l):.1f}" y1="{ym}" x2="{sx(u):.1f}" y2="{ym}" stroke="#222" stroke-width="1.5"/>'
                         f'<line x1="{sx(l):.1f}" y1="{ym - 5}" x2="{sx(l):.1f}" y2="{ym + 5}" stroke="#222"/>'
                         f'<line x1="{sx(u):.1f}" y1="{ym - 5}" x2="{sx(u):.1f}" y2="{ym + 5}" stroke="#222"/>')
        parts.append(f'<text x="{width - right + 6}" y="{y + 15}" font-size="11">{v:+.3f}{unit}</text>')
    parts.append(f'<text x="{left}" y="{h - 4}" font-size="10" fill="#777">{lo:+.2f}</text>'
                 f'<text x="{width - right}" y="{h - 4}" font-size="10" fill="#777" text-anchor="end">{hi:+.2f}</text></svg>')
    return "".join(parts)


def _highlight(caption: str, old: str, new: str) -> str:
    """The edited caption with the replaced words struck through and the new words highlighted."""
    if new and caption and new in caption:
        pre, _, post = caption.partition(new)
        return f"{html.escape(pre)}<del>{html.escape(old)}</del> <ins>{html.escape(new)}</ins>{html.escape(post)}"
    return f"<del>{html.escape(old)}</del> → <ins>{html.escape(new)}</ins>"


def _top_predictions(probs: np.ndarray, label: int, names: list[str], k: int = 3) -> str:
    items = []
    for c in np.argsort(-probs, kind="stable")[:k]:
        mark = ' class="true"' if c == label else ""
        tick = " ✓" if c == label else ""
        items.append(f"<li{mark}>{html.escape(names[c])} {probs[c] * 100:.1f}%{tick}</li>")
    if label not in np.argsort(-probs, kind="stable")[:k]:
        items.append(f'<li class="true" value="{int((probs > probs[label]).sum()) + 1}">{html.escape(names[label])} '
                     f'{probs[label] * 100:.1f}% (true)</li>')
    return f'<ol class="preds">{"".join(items)}</ol>'


def example_rows(r, per_type: int) -> list[int]:
    """Edit rows to show: the highest-Δp edits of each edit type."""
    from src.evaluation.stress_test import per_edit

    dp, _ = per_edit(r)
    rows = []
    for _, idx in sorted(r.paired.edits.records.groupby("edit_type").indices.items()):
        rows.extend(idx[np.argsort(-dp[idx], kind="stable")[:per_type]].tolist())
    return rows


def _pair_html(r, i: int, names: list[str], dp: float) -> str:
    ps = r.paired
    rec = ps.edits.records.iloc[i]
    s = int(ps.source_index[i])
    label = int(rec["label"])
    src_img, edit_img = ps.sources.load([s])[0], ps.edits.load([i])[0]
    caption = str(rec.get("caption", rec.get("edited_caption", "")) or "")
    if "edited_caption" in rec and isinstance(rec.get("edited_caption"), str):
        caption = rec["edited_caption"]
    words = _highlight(caption, str(rec.get("original_words", "")), str(rec.get("edited_words", "")))
    return (f'<div class="pair"><div class="muted">{html.escape(str(rec["edit_type"]))} · true class '
            f'<b>{html.escape(names[label])}</b> · Δp {dp:.3f}</div><div class="imgs">'
            f'<figure><img src="{_png(src_img)}" alt="original"><figcaption>original</figcaption>'
            f'{_top_predictions(r.sources.probs[s], label, names)}</figure>'
            f'<figure><img src="{_png(edit_img)}" alt="counterfactual"><figcaption>counterfactual</figcaption>'
            f'{_top_predictions(r.edits.probs[i], label, names)}</figure></div>'
            f'<div class="cap">{words}</div></div>')


def pair_images(r, names: list[str], per_type: int) -> tuple[list[Image.Image], list[str]]:
    """Side-by-side original | counterfactual images with captions (for W&B)."""
    images, captions = [], []
    for i in example_rows(r, max(1, per_type // 4)):
        s = int(r.paired.source_index[i])
        a, b = r.paired.sources.load([s])[0], r.paired.edits.load([i])[0]
        if a.shape != b.shape:
            b = np.asarray(Image.fromarray(b).resize((a.shape[1], a.shape[0])))
        images.append(Image.fromarray(np.concatenate([a, b], axis=1)))
        rec = r.paired.edits.records.iloc[i]
        label = int(rec["label"])
        captions.append(f"{rec['edit_type']}: {rec.get('original_words', '')} → {rec.get('edited_words', '')} | "
                        f"true {names[label]} | {names[r.sources.probs[s].argmax()]} → {names[r.edits.probs[i].argmax()]}")
    return images, captions


def write_report(result, path: str | Path) -> Path:
    path = Path(path)
    names = result.class_names
    topk = [c for c in result.table.columns if c.startswith("acc@")]
    h: list[str] = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Counterfactory stress test</title>"
                    f"<style>{CSS}</style></head><body>",
                    "<h1>Counterfactory stress test</h1>",
                    f"<div class='muted'>classifier: {html.escape(result.classifier)} · {len(names)} classes · "
                    f"{result.cache['computed']} images predicted, {result.cache['cached']} from the cache · "
                    f"{result.seconds:.1f} s</div>",
                    "<nav>" + "".join(f"<a href='#{s}'>{s}</a>" for s in SECTIONS) + "</nav>"]

    # ---- summary (LANCE Table 2)
    h.append("<h2 id='summary'>Summary (LANCE Table 2)</h2><table><tr><th>set</th><th>images</th>"
             + "".join(f"<th>{k}</th><th>Δ{k} [95% CI]</th>" for k in topk) + "<th>Δp</th><th>flip rate</th><th>FD</th></tr>")
    for _, row in result.table.iterrows():
        res = next((r for r in result.sets if r.name == row["set"]), None)
        g = res.groups.get("all", {}) if res else {}
        cells = [f"<td>{html.escape(str(row['set']))}</td><td>{int(row['n'])}</td>"]
        for k in topk:
            cells.append(f"<td>{_fmt(row.get(k))}</td>")
            cells.append(_delta_cell(g.get(f"delta_{k}")) if res else "<td>—</td>")
        cells.append(f"<td>{_fmt(row.get('delta_p'), pct=False)}</td><td>{_fmt(row.get('flip_rate'))}</td>"
                     f"<td>{_fmt(row.get('fid'), pct=False)}</td>")
        h.append("<tr>" + "".join(cells) + "</tr>")
    h.append("</table><div class='muted'>Accuracies in %. Δ = counterfactual − its source images, paired; "
             "CIs: bootstrap over source images. Δp = |p(y|x) − p(y|x′)|; flip rate = correct on x, wrong on x′ "
             "(share of correct x). FD = Fréchet distance to the originals.</div>")
    for r in result.sets:
        if any(k.startswith("vs_recon/") for k in r.groups.get("all", {})):
            g = r.groups["all"]
            h.append(f"<h3>{html.escape(r.name)}: edit vs reconstruction (separates the edit from generation artefacts)</h3>"
                     "<table><tr><th>reference</th><th>Δacc@1 [95% CI]</th><th>Δp</th><th>flip rate</th></tr>")
            for ref, pre in (("original", ""), ("reconstruction", "vs_recon/")):
                h.append(f"<tr><td>{ref}</td>{_delta_cell(g.get(pre + 'delta_acc@1'))}<td>{_fmt(g[pre + 'delta_p'].value, False)}</td>"
                         f"<td>{_fmt(g[pre + 'flip_rate'].value)}</td></tr>")
            h.append("</table>")
        if r.paired.skipped:
            h.append(f"<div class='muted'>{html.escape(r.name)}: skipped bad rows {html.escape(str(r.paired.skipped))}</div>")

    # ---- per edit type
    h.append("<h2 id='edit-types'>Sensitivity per edit type</h2>")
    for r in result.sets:
        types = sorted(g.split("=", 1)[1] for g in r.groups if g.startswith("edit_type=") and "/" not in g)
        h.append(f"<h3>{html.escape(r.name)}</h3><div class='charts'>")
        for metric, title in (("delta_acc@1", "Δacc@1 (drop < 0)"), ("delta_p", "mean Δp"), ("flip_rate", "flip rate")):
            ests = [r.groups[f"edit_type={t}"].get(metric) for t in types]
            h.append(bar_chart(f"{r.name}: {title}", types, [e.value if e else math.nan for e in ests],
                               [e.low if e else math.nan for e in ests], [e.high if e else math.nan for e in ests]))
        h.append("</div><table><tr><th>edit type</th><th>edits</th>" + "".join(f"<th>acc{k[3:]}</th><th>Δ{k} [95% CI]</th>" for k in topk)
                 + "<th>Δp [95% CI]</th><th>flip rate [95% CI]</th></tr>")
        for t in types:
            g = r.groups[f"edit_type={t}"]
            h.append(f"<tr><td>{html.escape(t)}</td><td>{g['delta_p'].n}</td>"
                     + "".join(f"<td>{_fmt(g[k].value)}</td>{_delta_cell(g.get('delta_' + k))}" for k in topk if k in g)
                     + _delta_cell(g["delta_p"], pct=False).replace("+", "") + _delta_cell(g["flip_rate"]).replace("+", "") + "</tr>")
        h.append("</table>")

    # ---- per class
    h.append("<h2 id='classes'>Per class</h2>")
    for r in result.sets:
        classes = [n for n in names if f"class={n}" in r.groups]
        h.append(f"<h3>{html.escape(r.name)}</h3><div class='charts'>")
        ests = [r.groups[f"class={c}"]["delta_acc@1"] for c in classes]
        h.append(bar_chart(f"{r.name}: Δacc@1 per class", classes, [e.value for e in ests], [e.low for e in ests], [e.high for e in ests]))
        ests = [r.groups[f"class={c}"]["delta_p"] for c in classes]
        h.append(bar_chart(f"{r.name}: mean Δp per class", classes, [e.value for e in ests], [e.low for e in ests], [e.high for e in ests]))
        h.append("</div>")
        types = sorted(g.split("=", 1)[1] for g in r.groups if g.startswith("edit_type=") and "/" not in g)
        h.append("<table><tr><th>class \\ Δacc@1</th>" + "".join(f"<th>{html.escape(t)}</th>" for t in types) + "</tr>")
        for c in classes:
            cells = []
            for t in types:
                e = r.groups.get(f"edit_type={t}/class={c}", {}).get("delta_acc@1")
                cells.append(_delta_cell(e))
            h.append(f"<tr><td>{html.escape(c)}</td>{''.join(cells)}</tr>")
        h.append("</table>")

    # ---- image pairs
    h.append("<h2 id='examples'>Examples: original | counterfactual (largest Δp per edit type)</h2>")
    for r in result.sets:
        from src.evaluation.stress_test import per_edit

        dp, _ = per_edit(r)
        per_type = max(1, result.settings.examples // 2)
        h.append(f"<h3>{html.escape(r.name)}</h3><div class='grid'>")
        h.extend(_pair_html(r, i, names, float(dp[i])) for i in example_rows(r, per_type))
        h.append("</div>")

    # ---- insights
    h.append(f"<h2 id='insights'>Class-level insights</h2><div class='muted'>Edits of each class clustered by "
             f"text features of edited vs original words ({html.escape(result.text_encoder)}), K-Means with "
             f"k = min({result.settings.clusters}, edits); clusters ranked by mean Δp.</div>")
    for r in result.sets:
        if not r.clusters:
            h.append(f"<h3>{html.escape(r.name)}</h3><div class='muted'>no edit words: clustering skipped</div>")
            continue
        h.append(f"<h3>{html.escape(r.name)}</h3>")
        current = None
        for cl in r.clusters:
            if cl.class_name != current:
                current = cl.class_name
                h.append(f"<h4>{html.escape(current)}</h4>")
            thumbs = "".join(f"<img src='{_png(r.paired.sources.load([int(r.paired.source_index[i])])[0], 64)}' alt='original'>"
                             f"<img src='{_png(r.paired.edits.load([i])[0], 64)}' alt='counterfactual'> "
                             for i in cl.exemplars)
            h.append(f"<div class='cluster'><b>{html.escape(cl.name)}</b> · {cl.size} edits · mean Δp "
                     f"{cl.mean_delta_p:.3f} · flip rate {cl.flip_rate * 100:.1f}%<br>{thumbs}</div>")

    # ---- splits
    h.append("<h2 id='splits'>Splits</h2>")
    if result.splits:
        keys = sorted({k for v in result.splits.values() for k in v if "/" not in k})
        h.append("<table><tr><th>split</th>" + "".join(f"<th>{k}</th>" for k in keys) + "</tr>")
        for split, vals in result.splits.items():
            h.append(f"<tr><td>{html.escape(split)}</td>" + "".join(f"<td>{_fmt(vals.get(k))}</td>" for k in keys) + "</tr>")
        h.append("</table>")
        for split, vals in result.splits.items():
            sub = {k: v for k, v in vals.items() if "/" in k and not k.startswith("recall/")}
            if sub:
                h.append(f"<h3>{html.escape(split)} per edit type</h3><table><tr><th>metric</th><th>value</th></tr>"
                         + "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(sub.items())) + "</table>")
    else:
        h.append("<div class='muted'>no plain splits evaluated</div>")

    # ---- about
    s = result.settings
    h.append(f"<h2 id='about'>About this run</h2><ul><li>text features for clustering: {html.escape(result.text_encoder)}</li>"
             f"<li>image features for the Fréchet distance: {html.escape(result.image_features)}</li>"
             f"<li>bootstrap: {s.bootstrap} resamples of source images, {s.confidence:.0%} intervals, seed {s.seed}</li>"
             f"<li>bad manifest rows: {html.escape(s.on_bad_row)}</li></ul></body></html>")
    path.write_text("\n".join(h), encoding="utf-8")
    return path
