"""``--report out.html``: one self-contained page about a run (no scripts, no network, inline SVG).

What it shows: the before/after summary; agreement with the original with its 95 %
intervals and the caveats; the kept channels per group as bars; PRO's error curve of
every group with where the allocation cut; what stayed unpruned and why; where the time
went; and, for a family (``--ratio 0.2,0.3,0.5``), the trade-off between MACs and
agreement across its models.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

from .report import PruneReport

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px auto; max-width: 1100px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 8px 0; } td, th { padding: 3px 10px; text-align: left; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.caution { color: #a15c00; } .muted { color: #777; font-size: 12px; }
.curves { display: flex; flex-wrap: wrap; gap: 8px; } .curve { border: 1px solid #eee; padding: 4px; }
"""


def render_html(report: PruneReport, family: Sequence[PruneReport] = ()) -> str:
    """The page for ``report`` (and the trade-off of ``family``, the reports of one family run)."""
    r = report
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>onnx-poem: {escape(r.model)}</title><style>{STYLE}</style></head><body>",
        f"<h1>onnx-poem report: {escape(r.model)}</h1>",
        f'<p class="muted">method {escape(r.method)} ({escape(r.mode)}, {escape(r.allocation)}), ratio {r.ratio:.3g}'
        + (f", MACs target {r.target_macs:g}" if r.target_macs is not None else "")
        + f", seed {r.seed}; {r.calibration_samples} samples fit, {r.selection_samples} chose between candidates"
        + (" (SYNTHETIC calibration)" if r.synthetic_calibration else "")
        + "</p>",
        "<h2>Before and after</h2>",
        _table(
            ["", "before", "after", "ratio"],
            [
                ["MACs", f"{r.macs_before:,}", f"{r.macs_after:,}", f"{r.macs_ratio:.3f}"],
                ["parameters", f"{r.params_before:,}", f"{r.params_after:,}", f"{r.params_ratio:.3f}"],
                *_latency_rows(r.latency),
            ],
        ),
        *_latency_notes(r.latency),
        f"<p>{sum(g['kept'] < g['channels'] for g in r.groups)} of {len(r.groups)} channel groups pruned; "
        f"{len(r.unprunable)} parts left unpruned (listed below).</p>",
        *([f"<p>Hidden size (--hidden): {escape(r.hidden_text())}.</p>"] if r.hidden else []),
        "<h2>Agreement with the original</h2>",
        _agreement(r),
        "<h2>Kept channels per group</h2>",
        _bars(r.groups),
    ]
    if r.curves:
        parts += [
            "<h2>Error curves (PRO) and where the allocation cut</h2>",
            '<p class="muted">Predicted relative error at the output against the units removed from that group '
            "alone; the red line is the number removed.</p>",
            '<div class="curves">' + "".join(_curve(gid, c) for gid, c in r.curves.items()) + "</div>",
        ]
    if family:
        parts += ["<h2>The family: MACs against agreement</h2>", _tradeoff(family)]
    parts += [
        "<h2>Left unpruned, and why</h2>",
        _table(["where", "reason"], [[u["where"], u["reason"]] for u in r.unprunable]) if r.unprunable else "<p>-</p>",
    ]
    if r.warnings:
        parts += ["<h2>Warnings</h2>", "<ul>" + "".join(f"<li>{escape(w)}</li>" for w in r.warnings) + "</ul>"]
    parts += ["<h2>Where the time went</h2>", _timings(r.timings), "</body></html>"]
    return "\n".join(parts) + "\n"


def _latency_rows(lat: dict[str, Any]) -> list[list[str]]:
    if "pruned_ms" not in lat:
        return []
    return [[f"latency (ms, {lat['runtime']}, batch {lat['batch']})", f"{lat['original_ms']:.2f}",
             f"{lat['pruned_ms']:.2f}", f"{lat['measured']:.3f}"]]  # fmt: skip


def _latency_notes(lat: dict[str, Any]) -> list[str]:
    if "target" not in lat:
        return []
    tried = "; ".join(f"{label}: allocated for {p:.3f}, measured {m:.3f}" for label, p, m in lat.get("loop", []))
    return [
        f'<p class="muted">Latency target {lat["target"]:.3f} of the original on {escape(lat["runtime"])}: '
        f"per-layer table (channel step {lat['step']}) predicted {lat['predicted']:.3f}; the whole model was "
        f"timed at its widths and the target corrected: {escape(tried)}. Chosen (of those meeting the target, the "
        f"smallest predicted error): {escape(lat.get('chosen', ''))}.</p>"
    ]


class _Raw(str):
    """Markup this module made itself (an SVG): a table cell that is not escaped."""


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = "".join(f"<th>{escape(str(h))}</th>" for h in head)

    def cell(c: Any) -> str:
        text = c if isinstance(c, _Raw) else escape(str(c))
        return f'<td class="num">{text}</td>' if _numeric(c) else f"<td>{text}</td>"

    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{cells}</tr>{body}</table>"


def _numeric(c: Any) -> bool:
    if isinstance(c, _Raw):
        return False
    return isinstance(c, int | float) or (isinstance(c, str) and c.replace(",", "").replace(".", "", 1).isdigit())


def _agreement(r: PruneReport) -> str:
    v = r.verification
    rows = []
    for name, a in r.agreement.items():
        for key, label in (("top1_agreement", "top-1 agreement"), ("cosine", "centred cosine")):
            if key in a:
                lo, hi = a[f"{key}_ci95"]
                rows.append([name, label, f"{a[key]:.4f}", f"{lo:.4f} - {hi:.4f}", _Raw(_interval(a[key], lo, hi))])
        if "accuracy_pruned" in a:
            lo, hi = a["accuracy_pruned_ci95"]
            rows.append([name, "top-1 accuracy (pruned)", f"{a['accuracy_pruned']:.4f}", f"{lo:.4f} - {hi:.4f}", ""])
        rows.append([name, "relative error", f"{a['rel_error']:.4f}", "", ""])
    where = f"{v.get('samples', 0)} samples of the {escape(str(v.get('source', '?')))}, never used for fitting"
    html = _table(["output", "measure", "value", "95 % interval", ""], rows)
    cautions = "".join(f'<p class="caution">caution: {escape(c)}</p>' for c in v.get("caveats", []))
    return f"<p class='muted'>{where}</p>{html}{cautions}"


def _interval(value: float, lo: float, hi: float, width: int = 200) -> str:
    """A small SVG: the interval [lo, hi] on [0, 1] (or [-1, 1] below 0) as a bar, the value as a tick."""
    base = -1.0 if lo < 0 else 0.0

    def x(v: float) -> float:
        return 4 + (width - 8) * (v - base) / (1.0 - base)

    return (
        f'<svg width="{width}" height="14"><rect x="4" y="6" width="{width - 8}" height="2" fill="#ddd"/>'
        f'<rect x="{x(lo):.1f}" y="3" width="{max(x(hi) - x(lo), 1):.1f}" height="8" fill="#9cc3e6"/>'
        f'<rect x="{x(value) - 1:.1f}" y="1" width="2" height="12" fill="#1f5f99"/></svg>'
    )


def _bars(groups: Sequence[dict[str, Any]], width: int = 520) -> str:
    """One row per group: the original channels as a grey bar, the kept ones in blue."""
    if not groups:
        return "<p>no prunable group</p>"
    most = max(g["channels"] for g in groups) or 1
    row_h, label_w = 16, 330
    rows = []
    for i, g in enumerate(groups):
        y = i * row_h
        full = width * g["channels"] / most
        kept = width * g["kept"] / most
        label = escape(str(g["group"]))[:48]
        rows.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" font-size="11">{label}</text>'
            f'<rect x="{label_w}" y="{y + 3}" width="{full:.1f}" height="10" fill="#e4e4e4"/>'
            f'<rect x="{label_w}" y="{y + 3}" width="{kept:.1f}" height="10" fill="#3b7dd8"/>'
            f'<text x="{label_w + full + 4:.1f}" y="{y + 12}" font-size="11">{g["kept"]} / {g["channels"]}</text>'
        )
    height = row_h * len(groups) + 4
    return f'<svg width="{label_w + width + 90}" height="{height}">{"".join(rows)}</svg>'


def _curve(gid: str, c: dict[str, Any], w: int = 200, h: int = 110) -> str:
    """PRO's error curve of one group, with the cut as a red line."""
    xs, ys, cut = c["removed"], c["error"], c["cut"]
    xmax, ymax = max(xs[-1], 1), max(max(ys), 1e-12)
    pad = 6

    def px(v: float) -> float:
        return pad + (w - 2 * pad) * v / xmax

    def py(v: float) -> float:
        return h - pad - (h - 2 * pad) * v / ymax

    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys, strict=True))
    return (
        f'<div class="curve"><div class="muted">{escape(gid)[:40]}</div><svg width="{w}" height="{h}">'
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#fafafa"/>'
        f'<polyline points="{path}" fill="none" stroke="#1f5f99" stroke-width="1.5"/>'
        f'<line x1="{px(cut):.1f}" y1="0" x2="{px(cut):.1f}" y2="{h}" stroke="#d33" stroke-width="1.5"/>'
        f'</svg><div class="muted">removed {cut} of {xs[-1]} probed; max error {ymax:.3g}</div></div>'
    )


def _tradeoff(family: Sequence[PruneReport], w: int = 420, h: int = 260) -> str:
    """Each model of the family as a point: MACs ratio against its agreement with the original (top-1
    agreement, else the centred cosine, else the relative error: the first measure every model has)."""
    firsts = [next(iter(rep.agreement.values()), {}) for rep in family]
    key = next((k for k in ("top1_agreement", "cosine", "rel_error") if all(k in a for a in firsts)), None)
    if key is None or not family:
        return "<p>no agreement measured</p>"
    points = [(rep.macs_ratio, float(a[key]), rep.ratio) for rep, a in zip(family, firsts, strict=True)]
    lo, hi = min(0.0, *(p[1] for p in points)), max(1.0, *(p[1] for p in points))
    pad = 30

    def px(v: float) -> float:
        return pad + (w - 2 * pad) * v

    def py(v: float) -> float:
        return h - pad - (h - 2 * pad) * (v - lo) / (hi - lo)

    dots = "".join(
        f'<circle cx="{px(m):.1f}" cy="{py(v):.1f}" r="4" fill="#1f5f99"/>'
        f'<text x="{px(m) + 6:.1f}" y="{py(v) - 6:.1f}" font-size="11">r={r:g}</text>'
        for m, v, r in points
    )
    label = {"top1_agreement": "top-1 agreement", "cosine": "centred cosine", "rel_error": "relative error"}[key]
    axes = (
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="#999"/>'
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="#999"/>'
        f'<text x="{w / 2:.0f}" y="{h - 6}" font-size="11" text-anchor="middle">MACs ratio (0 - 1)</text>'
        f'<text x="8" y="{pad - 10}" font-size="11">{label} ({lo:g} - {hi:g})</text>'
    )
    rows = [[f"{r:g}", f"{m:.3f}", f"{v:.4f}"] for m, v, r in points]
    return f'<svg width="{w}" height="{h}">{axes}{dots}</svg>' + _table(["ratio", "MACs ratio", label], rows)


def _timings(t: dict[str, float]) -> str:
    """The stages' seconds (they add up to the total; PRO's whole pass and a family's shared part noted apart)."""
    total = t.get("total", 0.0)
    extra = {
        "pro_total": "PRO's pass (its statistics and curves, counted in the stages)",
        "family_shared": "shared by the family (load, analysis, PRO's curves)",
    }
    rows = [[k, f"{v:.2f}"] for k, v in sorted(t.items(), key=lambda kv: -kv[1]) if k not in ("total", *extra)]
    notes = "".join(f"<p class='muted'>{escape(label)}: {t[k]:.2f} s</p>" for k, label in extra.items() if k in t)
    return _table(["stage", "seconds"], [*rows, ["total", f"{total:.2f}"]]) + notes
