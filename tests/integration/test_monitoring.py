"""Monitoring on real served traffic: zero skew on a faithful replay, alarms on broken ones."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import replace as copy_with
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from monitoring.feature_log import sink
from monitoring.monitor import MonitorResult, Window, run_monitor
from serving.replay import replay
from serving.worker import build_worker
from skewless.data import write_transactions
from skewless.settings import Settings
from skewless.spark import spark_session
from tests.conftest import TrainedPlatform, private_settings
from training.pipeline import materialize_with_progress

pytestmark = pytest.mark.integration

FAITHFUL = datetime(2026, 5, 13, tzinfo=UTC)
"""A whole week, so the weekday mix (the weekend flag) matches the training week's."""
CENTS = datetime(2026, 5, 20, tzinfo=UTC)
SCALED = datetime(2026, 5, 22, tzinfo=UTC)


def _serve(settings: Settings, events: int) -> None:
    stats = build_worker(settings).run(max_events=events, idle_exit_s=15)
    assert stats.scored == events
    assert sink(settings, idle_exit_s=3) >= events


def _serve_altered(
    platform: TrainedPlatform, start: datetime, days: int, factor: float
) -> Settings:
    """Serve a window whose amounts are multiplied by `factor`, on a private state."""
    settings = private_settings(platform, stream_state_prefix=f"test:{uuid.uuid4().hex}")
    materialize_with_progress(spark_session(settings), settings, platform.data, until=start)
    end = start + timedelta(days=days)
    altered = platform.transactions.copy()
    inside = (altered["tx_datetime"] >= start) & (altered["tx_datetime"] < end)
    altered.loc[inside, "tx_amount"] *= factor
    path = write_transactions(altered, settings.data_dir / f"altered-{uuid.uuid4().hex}.parquet")
    published = replay(settings, path, start, end, None)
    _serve(settings, published.transactions)
    return settings


@pytest.fixture(scope="module")
def faithful(trained_platform: TrainedPlatform) -> tuple[Settings, MonitorResult]:
    """A week replayed from materialized state through the worker, then every check."""
    settings = private_settings(trained_platform)
    materialize_with_progress(
        spark_session(settings), settings, trained_platform.data, until=FAITHFUL
    )
    end = FAITHFUL + timedelta(days=7)
    published = replay(settings, trained_platform.data, FAITHFUL, end, None)
    _serve(settings, published.transactions)
    return settings, run_monitor(settings, Window(FAITHFUL, end))


def test_faithful_replay_has_no_skew_on_any_feature(
    faithful: tuple[Settings, MonitorResult],
) -> None:
    _, result = faithful
    assert result.skew is not None
    assert len(result.skew) == 23
    for feature in result.skew:
        assert feature.total > 500, feature.name
        assert feature.mismatch_rate <= 0.001, (feature.name, feature.mismatch_rate)
        assert feature.online_only_null == feature.offline_only_null == 0, feature.name
    assert result.skew_breaches == []


def test_drift_stays_quiet_on_an_unshifted_stream(faithful: tuple[Settings, MonitorResult]) -> None:
    _, result = faithful
    assert {d.name for d in result.drift} >= {"amount", "customer_avg_amount_7d", "score"}
    assert result.drift_alerts == []


def test_skew_check_names_features_when_amounts_arrive_in_cents(
    trained_platform: TrainedPlatform,
) -> None:
    settings = _serve_altered(trained_platform, CENTS, 2, factor=100.0)
    result = run_monitor(settings, Window(CENTS, CENTS + timedelta(days=2)), with_report=False)
    breached = " ".join(result.skew_breaches)
    for name in ("customer_avg_amount_1d", "customer_avg_amount_7d", "customer_avg_amount_30d"):
        assert name in breached
    assert "terminal_risk_7d" not in breached
    assert not result.ok


def test_drift_alerts_on_amounts_multiplied_by_one_and_a_half(
    trained_platform: TrainedPlatform,
) -> None:
    settings = _serve_altered(trained_platform, SCALED, 2, factor=1.5)
    result = run_monitor(
        settings, Window(SCALED, SCALED + timedelta(days=2)), with_skew=False, with_report=False
    )
    alerted = {d.name for d in result.drift if d.status == "alert"}
    assert "amount" in alerted
    assert not result.ok
    quiet = copy_with(result, drift=[d for d in result.drift if d.name.startswith("terminal")])
    assert quiet.drift_alerts == []


class _Plots(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.features: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        feature = dict(attrs).get("data-feature")
        if feature and tag in ("img", "svg"):
            self.features.append(feature)


def test_report_renders_in_a_headless_browser(
    faithful: tuple[Settings, MonitorResult], tmp_path: Path
) -> None:
    _, result = faithful
    assert result.report is not None
    assert result.summary is not None and result.summary.exists()
    browser = [
        "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
    ]  # fmt: skip
    shot = tmp_path / "report.png"
    subprocess.run(
        [*browser, f"--screenshot={shot}", "--window-size=1400,4000", result.report.as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    dom = subprocess.run(
        [*browser, "--dump-dom", result.report.as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    plots = _Plots()
    plots.feed(dom)
    assert sorted(plots.features) == sorted({*[f.name for f in result.drift]})
    assert len(plots.features) == 24  # 23 features and the score
