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

from monitoring.drift import FeatureDrift, drift_report
from monitoring.monitor import MonitorResult, live_quality, verdict
from monitoring.report import distribution_bars, render_report, summary_json
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
            "test_protocol_auc_roc": [0.876, 0.876],
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


def test_a_flag_feature_is_two_bars_and_empty_outer_bins_are_left_out() -> None:
    rng = np.random.default_rng(3)
    flags = pd.DataFrame({"during_night": rng.binomial(1, 0.3, 4_000).astype(float)})
    stats = reference_statistics(flags, ["during_night"])["during_night"]
    labels, training, serving = distribution_bars(stats, flags["during_night"].head(500))
    assert labels == ["0", "1"]
    assert training.sum() == pytest.approx(1.0) and serving.sum() == pytest.approx(1.0)
    amounts = pd.DataFrame({"amount": rng.gamma(2, 25, 4_000)})
    stats = reference_statistics(amounts, ["amount"])["amount"]
    labels, _, _ = distribution_bars(stats, amounts["amount"])
    assert labels[0].startswith("≤") and labels[-1].startswith(">") and len(labels) == 10
    below = amounts["amount"][amounts["amount"] <= stats.inner_edges[2]]  # served: low bins only
    labels, training, serving = distribution_bars(stats, below)
    assert len(labels) == 10  # training still fills every bin: nothing is left out
    assert serving[3:].sum() == 0


def test_the_score_keeps_its_fraud_tail_in_the_reference_and_the_plot() -> None:
    rng = np.random.default_rng(4)
    scores = pd.DataFrame(
        {"score": np.concatenate([rng.beta(1, 300, 9_900), rng.uniform(0.5, 1, 100)])}
    )
    plain = reference_statistics(scores, ["score"])["score"]
    tailed = reference_statistics(scores, ["score"], tail_features=["score"])["score"]
    assert plain.inner_edges[-1] < 0.02  # deciles: every fraud in one bar with 10% of the rows
    assert tailed.inner_edges[-1] > 0.5  # the 99.9% quantile sits among the frauds
    assert sum(tailed.histogram[-3:]) == pytest.approx(0.05, abs=0.002)
    labels, training, _ = distribution_bars(tailed, scores["score"])
    assert len(labels) == len(tailed.inner_edges) + 1 and training[-1] == pytest.approx(0.001)


def test_the_live_quality_plot_is_drawn_next_to_the_table(tmp_path: Path) -> None:
    parser = parse(render_report(tmp_path / "report.html", **inputs(drifted=False)))
    live = [attrs for tag, attrs in parser.tags if tag == "img" and attrs.get("class") == "live"]
    assert len(live) == 1 and str(live[0]["src"]).startswith("data:image/png;base64,")


def test_a_red_headline_says_what_to_do_next() -> None:
    drifted = FeatureDrift("amount", 0.4, 0.2, 0.3, 0.0, 0.0, 1000, "alert")
    result = MonitorResult(served=1000, model_version="3", drift=[drifted])
    headline = verdict(result)
    assert headline.startswith("ALERT: drift alert amount: PSI 0.400")
    assert "Next: check the upstream feed" in headline and "\n" not in headline
    result.skew_breaches = ["amount: 2.0% rows disagree"]
    assert "Next: do not trust these scores" in verdict(result)
    result.skew_breaches, result.drift = [], []
    assert verdict(result).startswith("OK: no drift alert over 1,000 served events")


def test_live_quality_leaves_out_cards_known_compromised_that_day() -> None:
    """Card 1's fraud on 10-01 is known from 10-09 (7-day delay): out of that day's figures."""
    days = ["2026-10-01", "2026-10-08", "2026-10-09"]
    rows = [
        (day, card, score, int((card == 1) == (day == days[0]) and card <= 2))
        for day in days
        for card, score in ((1, 0.9), (2, 0.8), (3, 0.1), (4, 0.2))
    ]
    served = pd.DataFrame(rows, columns=["day", "customer_id", "score", "tx_fraud"])
    served["tx_datetime"] = pd.to_datetime(served["day"], utc=True) + pd.Timedelta(hours=12)
    served["transaction_id"] = range(len(served))
    labels = served[["transaction_id", "tx_fraud"]]
    test = {"test_protocol_auc_roc": 0.9}
    live = live_quality(served.drop(columns=["tx_fraud", "day"]), labels, test, delay_days=7)
    assert live is not None
    assert list(live["events"]) == [4, 4, 4]
    assert list(live["protocol_events"]) == [4, 4, 3]  # card 1 from 10-09 on; card 2: too late
    # 10-09 without card 1 (0.9, genuine that day): card 2 ranks first -> AP 1.0; with it 0.5.
    assert list(live["average_precision"]) == [1.0, 0.5, 1.0]
    assert list(live["test_protocol_auc_roc"]) == [0.9, 0.9, 0.9]
