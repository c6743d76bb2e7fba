"""`skewless monitor`: skew, drift, data quality and live model quality of what was served.

Every check reads the online log (what the worker served, feature by feature) and compares it
with what training saw: the offline recomputation of the same (entity, event time) pairs for
skew, the reference statistics logged with the model version in use for drift, the delayed
labels for live quality.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring import inputs
from monitoring.drift import DriftThresholds, FeatureDrift, drift_report
from monitoring.feature_log import log_days, read_log
from monitoring.report import render_report, summary_json
from monitoring.skew import FeatureSkew, SkewThresholds, SkewTolerance, breaches, skew_report
from skewless import feature_store, model_runtime, registry
from skewless.aggregation import label_delay_days
from skewless.settings import Settings
from skewless.statistics import FeatureStatistics

logger = logging.getLogger(__name__)

REPORTS = "reports"


class NothingServedError(RuntimeError):
    """The online log has no event in the requested window."""


@dataclass(frozen=True)
class Window:
    """Event-time bounds of a check, [since, until)."""

    since: datetime | None = None
    until: datetime | None = None


@dataclass
class MonitorResult:
    """Figures of one monitoring run and how long each check took."""

    served: int
    model_version: str
    drift: list[FeatureDrift] = field(default_factory=list)
    skew: list[FeatureSkew] | None = None
    skew_breaches: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    report: Path | None = None
    summary: Path | None = None

    @property
    def drift_alerts(self) -> list[str]:
        return alert_lines(self.drift)

    @property
    def ok(self) -> bool:
        return not self.skew_breaches and not self.drift_alerts


def served_window(settings: Settings, window: Window) -> tuple[pd.DataFrame, str]:
    """The events of the window served by the model version that served most of it, and
    that version.

    Every check compares with that version's training reference, and another version may
    have read other features (the log has nulls for a feature a version did not read), so
    the events other versions served are left out, with a warning giving their number.
    """
    served = read_log(settings, window.since, window.until)
    if served.empty:
        raise NothingServedError(
            "no served event in the window: run the worker, then `monitor sink`"
        )
    versions = served["model_version"].astype(str)
    version = str(versions.mode().iloc[0])
    if others := int((versions != version).sum()):
        logger.warning(
            "%d events of the window were served by other versions than v%s: left out",
            others,
            version,
        )
    return served[versions == version].reset_index(drop=True), version


def feature_columns(reference: dict[str, FeatureStatistics], served: pd.DataFrame) -> list[str]:
    return [name for name in reference if name in served.columns and name != "score"]


def check_skew(
    settings: Settings,
    served: pd.DataFrame,
    reference: dict[str, FeatureStatistics],
    tolerance: SkewTolerance,
) -> list[FeatureSkew]:
    """Online features against Feast's offline recomputation for the same events."""
    offline = inputs.offline_features(settings, served)
    online = served.set_index("transaction_id")
    return skew_report(online, offline, feature_columns(reference, served), reference, tolerance)


def live_quality(
    served: pd.DataFrame, labels: pd.DataFrame, test_metrics: dict[str, float], delay_days: int
) -> pd.DataFrame | None:
    """AUC ROC, average precision and card precision@100 per serving day, once labelled.

    As in the test window, each day's figures leave out the cards already known compromised
    that day (a labelled fraud on a day up to the day minus `delay_days` minus one, among the
    served events: `skewless.known_frauds`), so they compare with the `test_protocol_*`
    figures in `test_metrics`. `events` counts the day's labelled events, `protocol_events`
    and `protocol_frauds` those the figures are computed on.
    """
    from skewless.fraud_metrics import auc_roc, average_precision, card_precision_at_k
    from skewless.known_frauds import first_fraud_days, known_compromised

    joined = served.merge(labels[["transaction_id", "tx_fraud"]], on="transaction_id")
    if joined.empty:
        return None
    known = known_compromised(joined, first_fraud_days(joined), delay_days)
    rows = []
    for day, everything in joined.groupby(joined["tx_datetime"].dt.strftime("%Y-%m-%d")):
        part = everything[~known[everything.index]]
        both_classes = part["tx_fraud"].nunique() == 2
        rows.append(
            {
                "day": day,
                "events": len(everything),
                "protocol_events": len(part),
                "protocol_frauds": int(part["tx_fraud"].sum()),
                "auc_roc": auc_roc(part["tx_fraud"], part["score"]) if both_classes else None,
                "average_precision": average_precision(part["tx_fraud"], part["score"])
                if both_classes
                else None,
                "card_precision_at_100": card_precision_at_k(part, 100) if len(part) else None,
                **test_metrics,
            }
        )
    return pd.DataFrame(rows)


def data_quality(
    settings: Settings, served: pd.DataFrame, version: str
) -> dict[str, dict[str, Any]]:
    """The raw-transactions suite on the served events, and the training input's outcome."""
    from skewless.quality import validate_transactions

    raw = served[["transaction_id", "tx_datetime", "customer_id", "terminal_id"]].assign(
        tx_amount=served["amount"].astype("float64")
    )
    report = validate_transactions(raw, with_label=False)
    return {
        "served transactions": {"success": report.success, "details": report.describe()},
        "training input": {
            "success": True,
            "details": f"validated before training (run of version {version})",
        },
    }


def alert_lines(drift: list[FeatureDrift]) -> list[str]:
    """One line per feature whose drift alerts."""
    return [
        f"{d.name}: PSI {d.psi:.3f}, JS {d.js:.3f}, KS {d.ks:.3f}"
        for d in drift
        if d.status == "alert"
    ]


def drift_thresholds(settings: Settings) -> DriftThresholds:
    return DriftThresholds(
        psi_warn=settings.drift_psi_warn,
        psi_alert=settings.drift_psi_alert,
        js_alert=settings.drift_js_alert,
        ks_alert=settings.drift_ks_alert,
    )


@dataclass(frozen=True)
class ChampionDrift:
    """The drift check over the recent events the current champion served."""

    champion: str | None
    served: int
    alerts: tuple[str, ...] = ()

    @property
    def alerting(self) -> bool:
        return bool(self.alerts)

    def describe(self) -> str:
        if self.champion is None:
            return "no champion to check (run `skewless train`)"
        events = f"{self.served:,} events served by champion v{self.champion}"
        if not self.served:
            return f"no events served by champion v{self.champion} yet"
        if not self.alerts:
            return f"no drift alert over {events}"
        return f"drift alert over {events} ({'; '.join(self.alerts)})"


def _latest_served_by(settings: Settings, version: str) -> pd.Timestamp | None:
    """The latest event time `version` served in the online log, read a day at a time from
    the latest day back (not the whole log), or None."""
    for day in reversed(log_days(settings)):
        start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
        served = read_log(settings, start, start + timedelta(days=1))
        if not served.empty:
            served = served[served["model_version"].astype(str) == version]
        if not served.empty:
            return pd.Timestamp(served["tx_datetime"].max())
    return None


def champion_drift(settings: Settings, recent: timedelta) -> ChampionDrift:
    """Drift of the events served by the current champion, over the last `recent` of their
    event time, against that version's training reference (thresholds from the settings).

    Events served by earlier versions are left out: once a new champion is in place, the
    drift that replaced the old one stops counting.
    """
    champion = registry.champion_version(registry.client(settings), settings.model_name)
    if champion is None:
        return ChampionDrift(None, 0)
    latest = _latest_served_by(settings, champion)
    if latest is None:
        return ChampionDrift(champion, 0)
    served = read_log(settings, since=(latest - recent).to_pydatetime())
    served = served[served["model_version"].astype(str) == champion]
    served = served[served["tx_datetime"] > latest - recent]
    reference = model_runtime.reference_statistics(settings, champion)
    drift = drift_report(reference, served, drift_thresholds(settings))
    return ChampionDrift(champion, len(served), tuple(alert_lines(drift)))


def run_monitor(
    settings: Settings, window: Window, with_skew: bool = True, with_report: bool = True
) -> MonitorResult:
    """Every check (thresholds from the settings), then the HTML report and JSON summary."""
    skew_thresholds = SkewThresholds(
        max_mismatch_rate=settings.skew_max_mismatch_rate, max_js=settings.skew_max_js
    )
    tolerance = SkewTolerance(relative=settings.skew_tolerance_relative)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    served, version = served_window(settings, window)
    reference = model_runtime.reference_statistics(settings, version)
    timings["read"] = time.perf_counter() - started
    result = MonitorResult(served=len(served), model_version=version, seconds=timings)

    started = time.perf_counter()
    result.drift = drift_report(reference, served, drift_thresholds(settings))
    timings["drift"] = time.perf_counter() - started
    if with_skew:
        started = time.perf_counter()
        result.skew = check_skew(settings, served, reference, tolerance)
        result.skew_breaches = breaches(result.skew, skew_thresholds)
        timings["skew"] = time.perf_counter() - started
    if not with_report:
        return result

    started = time.perf_counter()
    quality = data_quality(settings, served, version)
    dead = inputs.dead_letter_counts(settings)
    live = live_quality(
        served,
        inputs.labels(settings),
        inputs.logged_test_metrics(settings, version),
        label_delay_days(feature_store.load_declarations(settings)),
    )
    headline = verdict(result)
    now = datetime.now(UTC)
    folder = settings.data_dir / REPORTS
    name = f"monitor-{now:%Y%m%dT%H%M%S}"
    common: dict[str, Any] = {
        "verdict": headline,
        "verdict_ok": result.ok,
        "drift": result.drift,
        "skew": result.skew,
        "quality": quality,
        "dead_letters": dead,
        "live_quality": live,
        "generated_at": now,
        "skew_thresholds": skew_thresholds,
    }
    result.report = render_report(
        folder / f"{name}.html", reference=reference, served=served, **common
    )
    summary = summary_json(**common)
    result.summary = folder / f"{name}.json"
    result.summary.write_text(json.dumps(summary, indent=1))
    timings["report"] = time.perf_counter() - started
    return result


SKEW_NEXT_STEP = (
    "do not trust these scores: compare the worker's state with the backfill for the features "
    "named (`skewless monitor skew`) before the next release"
)
DRIFT_NEXT_STEP = (
    "check the upstream feed of the features named; if the shift is real, retrain and let "
    "the gate decide (`make train`)"
)


def verdict(result: MonitorResult) -> str:
    """One line: OK, or what alerts and what to do next."""
    problems = result.skew_breaches + [f"drift alert {line}" for line in result.drift_alerts]
    if not problems:
        checked = "skew or drift" if result.skew is not None else "drift"
        served = f"{result.served:,} served events (model v{result.model_version})"
        return f"OK: no {checked} alert over {served}"
    step = SKEW_NEXT_STEP if result.skew_breaches else DRIFT_NEXT_STEP
    return f"ALERT: {'; '.join(problems)}. Next: {step}."
