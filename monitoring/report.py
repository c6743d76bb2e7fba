"""The monitoring report: one self-contained HTML page for people, one dict for machines.

The page embeds everything it shows (inline style, plots as base64 PNG drawn with matplotlib's
object API on the Agg canvas), so it opens offline, from a CI artifact or an e-mail, and loads
nothing from the network.
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import logging
import math
from dataclasses import asdict
from datetime import date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from monitoring.drift import FeatureDrift, float_values, served_bin_counts
from monitoring.skew import FeatureSkew, SkewThresholds, breaches
from skewless.registry import PROTOCOL_PREFIX
from skewless.statistics import FeatureStatistics

logger = logging.getLogger(__name__)

STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933;
       margin: 0 auto; max-width: 1180px; padding: 24px; background: #f7f8fa; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; }
.meta { color: #616e7c; margin-bottom: 16px; }
.verdict { padding: 14px 18px; border-radius: 8px; font-size: 18px; font-weight: 600;
           color: #fff; }
.verdict.ok { background: #2f9e44; } .verdict.bad { background: #c92a2a; }
table { border-collapse: collapse; width: 100%; background: #fff; font-size: 13px; }
th, td { padding: 5px 9px; border-bottom: 1px solid #e4e7eb; text-align: right; }
th { background: #eef1f4; } td:first-child, th:first-child { text-align: left; }
tr.ok td:first-child { border-left: 4px solid #2f9e44; }
tr.warn { background: #fff4d6; } tr.warn td:first-child { border-left: 4px solid #f08c00; }
tr.alert { background: #ffe3e3; } tr.alert td:first-child { border-left: 4px solid #c92a2a; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(540px, 1fr));
         gap: 12px; }
.plots img, img.live { width: 100%; background: #fff; border-radius: 6px; }
.empty { color: #616e7c; font-style: italic; }
"""
MAX_DETAILS_CHARS = 400
LOG_SCALED = frozenset({"score"})
"""Plotted with a log-scaled share: the score's fraud tail holds well under 1% of the rows."""
LIVE_METRICS = {
    "auc_roc": ("AUC ROC", "#4c6ef5"),
    "average_precision": ("average precision", "#f76707"),
    "card_precision_at_100": ("card precision@100", "#2f9e44"),
}
"""Live quality columns plotted per serving day (handbook protocol: known compromised cards left
out), with their `test_protocol_` figure as a dashed line."""
COLORS = {"training": "#4c6ef5", "serving": "#f76707"}
DEFAULT_SKEW_THRESHOLDS = SkewThresholds()


def render_report(
    path: Path,
    *,
    verdict: str,
    verdict_ok: bool,
    reference: dict[str, FeatureStatistics],
    served: pd.DataFrame,
    drift: list[FeatureDrift],
    skew: list[FeatureSkew] | None,
    quality: dict[str, dict[str, Any]],
    dead_letters: dict[str, int],
    live_quality: pd.DataFrame | None,
    generated_at: datetime,
    skew_thresholds: SkewThresholds = DEFAULT_SKEW_THRESHOLDS,
) -> Path:
    """Write the HTML report to `path` and return it.

    One distribution plot per reference feature present in `served`; `quality` maps a check
    name to `{"success": bool, "details": ...}`; `live_quality` has one row per serving day.
    """
    stamp = generated_at.isoformat(timespec="seconds")
    plots = [_plot(stats, served[name]) for name, stats in reference.items() if name in served]
    body = [
        "<h1>skewless monitoring report</h1>",
        f'<div class="meta">Generated {_e(stamp)} &middot; {len(served):,} served rows</div>',
        f'<div class="verdict {"ok" if verdict_ok else "bad"}">{_e(verdict)}</div>',
        "<h2>Drift: serving against the training reference</h2>",
        _drift_table(drift),
        "<h2>Training/serving skew: online features against the offline recomputation</h2>",
        _skew_section(skew, skew_thresholds),
        "<h2>Data quality</h2>",
        _quality_table(quality),
        "<h2>Dead letters</h2>",
        _table(["reason", "events"], [[r, f"{n:,}"] for r, n in sorted(dead_letters.items())]),
        "<h2>Live model quality per serving day</h2>",
        _live_plot(live_quality),
        _live_table(live_quality),
        "<h2>Distributions: training (reference bins) vs serving</h2>",
        f'<div class="plots">{"".join(plots)}</div>',
    ]
    document = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>skewless monitoring {_e(stamp)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    logger.info("wrote monitoring report %s (%d feature plots)", path, len(plots))
    return path


def summary_json(
    *,
    verdict: str,
    verdict_ok: bool,
    drift: list[FeatureDrift],
    skew: list[FeatureSkew] | None,
    quality: dict[str, dict[str, Any]],
    dead_letters: dict[str, int],
    live_quality: pd.DataFrame | None,
    generated_at: datetime,
    skew_thresholds: SkewThresholds = DEFAULT_SKEW_THRESHOLDS,
) -> dict[str, Any]:
    """The report's figures as JSON-ready data (NaN becomes None, timestamps ISO strings)."""
    summary = {
        "generated_at": generated_at,
        "verdict": verdict,
        "verdict_ok": verdict_ok,
        "drift": {item.name: asdict(item) for item in drift},
        "skew": None if skew is None else {item.name: asdict(item) for item in skew},
        "skew_breaches": [] if skew is None else breaches(skew, skew_thresholds),
        "quality": quality,
        "dead_letters": dead_letters,
        "live_quality": None if live_quality is None else live_quality.to_dict(orient="records"),
    }
    return {key: _plain(value) for key, value in summary.items()}


def _plain(value: Any) -> Any:
    """`value` with only JSON types: dicts, lists, str, int, bool, finite float or None."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NaT or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if isinstance(value, str | int | float):
        return value
    return value.isoformat() if isinstance(value, date) else str(value)


def _e(text: object) -> str:
    """HTML-escaped text."""
    return html.escape(str(text), quote=True)


def _number(value: float, spec: str = ".4f") -> str:
    """A figure for a table cell; NaN shows as a dash."""
    return "–" if math.isnan(value) else format(value, spec)


def _share(value: float) -> str:
    """A rate as a percentage; NaN shows as a dash."""
    return _number(value, ".2%")


def _table(headers: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    """A table of formatted text cells (escaped here), rows optionally with a CSS class."""
    if not rows:
        return '<p class="empty">Nothing to report.</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for index, row in enumerate(rows):
        css = f' class="{classes[index]}"' if classes else ""
        cells = "".join(f"<td>{_e(cell)}</td>" for cell in row)
        lines.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _drift_table(drift: list[FeatureDrift]) -> str:
    headers = ["feature", "status", "PSI", "JS distance", "KS", "null (train)", "null (served)"]
    rows = [
        [
            *(d.name, d.status, _number(d.psi), _number(d.js), _number(d.ks)),
            *(_share(d.null_rate_reference), _share(d.null_rate_served)),
        ]
        for d in drift
    ]
    return _table(headers, rows, [d.status for d in drift])


def _skew_section(skew: list[FeatureSkew] | None, thresholds: SkewThresholds) -> str:
    if skew is None:
        return '<p class="empty">No skew check in this run.</p>'
    breaching = {line.split(":", 1)[0] for line in breaches(skew, thresholds)}
    unmatched = skew[0].online_without_offline if skew else 0
    headers = ["feature", "joined", "both null", "null online only", "null offline only"]
    headers += ["mismatches", "disagreement rate", "SMAPE", "max |diff|", "JS divergence"]
    rows = [
        [
            *(s.name, f"{s.total:,}", f"{s.both_null:,}", f"{s.online_only_null:,}"),
            *(f"{s.offline_only_null:,}", f"{s.mismatches:,}", _number(s.mismatch_rate, ".4%")),
            *(_number(s.smape, ".6f"), _number(s.max_abs_diff, ".3g"), _number(s.js_divergence)),
        ]
        for s in skew
    ]
    note = (
        f'<p class="meta">{unmatched:,} served transactions had no offline counterpart. '
        f"Breach above {thresholds.max_mismatch_rate:.3%} disagreeing rows or JS divergence "
        f"{thresholds.max_js}.</p>"
    )
    classes = ["alert" if s.name in breaching else "ok" for s in skew]
    return note + _table(headers, rows, classes)


def _quality_table(quality: dict[str, dict[str, Any]]) -> str:
    rows, classes = [], []
    for name, result in quality.items():
        details = json.dumps(_plain(result.get("details")), sort_keys=True)
        if len(details) > MAX_DETAILS_CHARS:
            details = details[:MAX_DETAILS_CHARS] + " ..."
        success = bool(result.get("success"))
        rows.append([name, "passed" if success else "FAILED", details])
        classes.append("ok" if success else "alert")
    return _table(["check", "result", "details"], rows, classes)


def _live_table(live_quality: pd.DataFrame | None) -> str:
    if live_quality is None or live_quality.empty:
        return '<p class="empty">No labelled serving days yet.</p>'
    rows = []
    for record in live_quality.to_dict(orient="records"):
        cells = []
        for value in record.values():
            if value is None or value is pd.NaT:
                cells.append("–")
            elif isinstance(value, datetime | date):
                cells.append(value.strftime("%Y-%m-%d"))
            elif isinstance(value, float | np.floating):
                cells.append(_number(float(value)))
            else:
                cells.append(str(value))
        rows.append(cells)
    return _table([str(column) for column in live_quality.columns], rows)


def distribution_bars(
    stats: FeatureStatistics, served: pd.Series
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Bin labels, training shares and serving shares of one feature, as people read them.

    Outer bins empty on both sides are left out; a 0/1 feature gets two bars, `0` and `1`.
    """
    edges = np.asarray(stats.inner_edges, dtype=np.float64)
    values = float_values(served)
    counts, _ = served_bin_counts(edges, values)
    served_shares = counts / counts.sum() if counts.sum() else np.zeros(len(counts))
    training = np.asarray(stats.histogram, dtype=np.float64)
    finite = values[np.isfinite(values)]
    flag = (
        stats.minimum >= 0
        and stats.maximum <= 1
        and len(edges) in (1, 2)
        and edges[0] == 0
        and bool(np.isin(finite, (0.0, 1.0)).all())
    )
    if flag:  # bins (-inf, 0], (0, 1] or (0, inf), and an empty (1, inf) when there are two edges
        return ["0", "1"], training[:2], served_shares[:2]
    labels = [f"≤{edges[0]:.3g}"] if len(edges) else ["all"]
    labels += [f"{low:.3g} – {high:.3g}" for low, high in itertools.pairwise(edges)]
    labels += [f">{edges[-1]:.3g}"] if len(edges) else []
    used = np.flatnonzero((training > 0) | (served_shares > 0))
    if used.size:
        keep = slice(int(used[0]), int(used[-1]) + 1)
        return labels[keep], training[keep], served_shares[keep]
    return labels, training, served_shares


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot(stats: FeatureStatistics, served: pd.Series) -> str:
    """Reference vs served bin shares of one feature as an embedded PNG <img>."""
    labels, training, serving = distribution_bars(stats, served)
    figure = Figure(figsize=(5.6, 3.5), dpi=100)
    axes = figure.add_subplot()
    position = np.arange(len(labels))
    axes.bar(position - 0.2, training, width=0.4, label="training", color=COLORS["training"])
    axes.bar(position + 0.2, serving, width=0.4, label="serving", color=COLORS["serving"])
    rotate = 30 if len(labels) > 4 else 0
    axes.set_xticks(position, labels, rotation=rotate, ha="right" if rotate else "center")
    axes.tick_params(labelsize=9)
    axes.set_title(stats.name, loc="left", fontsize=11)
    if stats.name in LOG_SCALED:
        axes.set_yscale("log")
        axes.set_ylabel("share of values (log)", fontsize=9)
    else:
        axes.set_ylabel("share of non-null values", fontsize=9)
    # Above the plot, right of the title: never over a bar.
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, fontsize=9)
    figure.tight_layout()
    return (
        f'<img data-feature="{_e(stats.name)}" alt="{_e(stats.name)}: training vs serving" '
        f'src="data:image/png;base64,{_png(figure)}">'
    )


def _live_plot(live_quality: pd.DataFrame | None) -> str:
    """Live quality per serving day, each metric against its test figure (dashed)."""
    if live_quality is None or live_quality.empty:
        return ""
    figure = Figure(figsize=(11.0, 3.4), dpi=100)
    axes = figure.add_subplot()
    days = [str(day) for day in live_quality["day"]]
    for column, (label, color) in LIVE_METRICS.items():
        if column not in live_quality:
            continue
        values = pd.to_numeric(live_quality[column], errors="coerce")
        axes.plot(days, values, marker="o", color=color, label=label)
        test = f"{PROTOCOL_PREFIX}{column}"
        if test in live_quality and live_quality[test].notna().any():
            axes.axhline(float(live_quality[test].dropna().iloc[0]), color=color, ls="--", lw=1)
    axes.set_ylim(0, 1)
    axes.tick_params(labelsize=9)
    axes.set_ylabel("score (dashed: test window)", fontsize=9)
    axes.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, frameon=False, fontsize=9)
    figure.autofmt_xdate(rotation=30)
    figure.tight_layout()
    source = f"data:image/png;base64,{_png(figure)}"
    return f'<img class="live" alt="live quality per day" src="{source}">'
