"""The HTML report is one well-formed, self-contained page with one plot per feature."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from monitoring.drift import drift_report
from monitoring.report import render_report, summary_json
from monitoring.skew import skew_report
from skewless.statistics import reference_statistics

FEATURES = ["tx_amount", "customer_nb_tx_7d", "terminal_risk_30d"]
VOID = {"meta", "img", "br", "hr", "link", "input"}


class PageParser(HTMLParser):
    """Collects start tags and checks that every opened element is closed in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.open: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def inputs(drifted: bool) -> dict[str, Any]:
    """Keyword arguments of `render_report` for a small served frame."""
    rng = np.random.default_rng(8)
    training = pd.DataFrame(
        {
            "tx_amount": rng.gamma(2, 25, 5_000),
            "customer_nb_tx_7d": rng.poisson(20, 5_000).astype(float),
            "terminal_risk_30d": rng.beta(1, 20, 5_000),
            "score": rng.beta(1, 30, 5_000),
        }
    )
    reference = reference_statistics(training, [*FEATURES, "score"])
    served = training.sample(2_000, random_state=1).reset_index(drop=True)
    served.index.name = "transaction_id"
    if drifted:
        served["tx_amount"] *= 1.5
    offline = served.copy()
    offline.loc[:4, "customer_nb_tx_7d"] = np.nan  # 5 of 2000 rows: above 0.1%
    live = pd.DataFrame(
        {
            "day": pd.to_datetime(["2026-10-01", "2026-10-02"], utc=True),
            "events": [1200, 800],
            "auc_roc": pd.Series([0.87, None], dtype=object),  # one class only on day 2
            "average_precision": [0.61, 0.55],
            "card_precision_at_100": [0.29, 0.27],
            "test_auc_roc": [0.876, 0.876],
        }
    )
    return {
        "verdict": "drift on tx_amount" if drifted else "all checks passed",
        "verdict_ok": not drifted,
        "reference": reference,
        "served": served,
        "drift": drift_report(reference, served),
        "skew": skew_report(served, offline, FEATURES, reference),
        "quality": {
            "amount_not_negative": {"success": True, "details": {"unexpected": 0}},
            "<script>alert(1)</script>": {"success": False, "details": {"ratio": np.nan}},
        },
        "dead_letters": {"invalid_json": 3, "missing_field": 1},
        "live_quality": live,
        "generated_at": datetime(2026, 11, 2, 8, 30, tzinfo=UTC),
    }


def parse(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


@pytest.mark.parametrize("drifted", [False, True])
def test_report_is_one_self_contained_page(tmp_path: Path, drifted: bool) -> None:
    arguments = inputs(drifted)
    path = render_report(tmp_path / "out" / "report.html", **arguments)
    page = path.read_text(encoding="utf-8")
    parser = parse(path)
    assert parser.errors == []
    assert parser.open == []
    plots = [attrs for tag, attrs in parser.tags if "data-feature" in attrs]
    assert sorted(str(attrs["data-feature"]) for attrs in plots) == sorted([*FEATURES, "score"])
    for attrs in plots:
        source = str(attrs["src"])
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(b"\x89PNG")
    assert "http://" not in page
    assert "https://" not in page
    assert not any(tag in {"script", "link"} for tag, _ in parser.tags)  # the name is escaped
    assert "<script>alert(1)</script>" in "".join(parser.text)
    verdicts = [
        attrs["class"] for tag, attrs in parser.tags if "verdict" in str(attrs.get("class"))
    ]
    assert verdicts == ["verdict bad" if drifted else "verdict ok"]
    assert "2026-11-02T08:30:00+00:00" in page
    assert "invalid_json" in page
    assert "2026-10-02" in page
    assert "None" not in page


def test_drift_rows_are_coloured_by_status(tmp_path: Path) -> None:
    parser = parse(render_report(tmp_path / "report.html", **inputs(drifted=True)))
    classes = [attrs.get("class") for tag, attrs in parser.tags if tag == "tr"]
    assert classes.count("alert") >= 2  # tx_amount drift and the failed quality check
    assert "ok" in classes


def test_summary_json_is_strict_json(tmp_path: Path) -> None:
    arguments = inputs(drifted=True)
    del arguments["reference"], arguments["served"]
    summary = summary_json(**arguments)
    text = json.dumps(summary, allow_nan=False)
    assert json.loads(text) == summary
    assert summary["verdict_ok"] is False
    assert summary["drift"]["tx_amount"]["status"] == "alert"
    assert summary["skew"]["customer_nb_tx_7d"]["offline_only_null"] == 5
    assert summary["skew_breaches"][0].startswith("customer_nb_tx_7d: ")
    assert summary["live_quality"][1]["auc_roc"] is None
    assert summary["dead_letters"] == {"invalid_json": 3, "missing_field": 1}
    assert summary["generated_at"] == "2026-11-02T08:30:00+00:00"
