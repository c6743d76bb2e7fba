"""The Prometheus rules, their promtool unit tests, the Grafana dashboard and the generated
server configuration.

promtool (Debian's `prometheus` package, installed by `make setup`) checks the rules and runs
their unit tests on synthetic series; the metric-name checks hold every PromQL query of the
rules and the dashboard to the names a `ScoringMetrics` registry really exposes.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from serving.metrics import ScoringMetrics
from skewless.services import prometheus_server
from skewless.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "monitoring" / "prometheus" / "rules.yml"
RULES_TESTS = ROOT / "monitoring" / "prometheus" / "rules_test.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "skewless.json"

PROMETHEUS_SERIES = {"up"}
"""Series Prometheus records itself for every scrape target."""

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels left out)."""
    text = _STRING.sub('""', promql)
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery windows
    text = _LABEL_LIST.sub("", text)  # by (...), on (...), group_left (...)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name = match.group(0)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gauge": ("",),
}


def exposed_names(registry: CollectorRegistry) -> set[str]:
    """Every series name the registry exposes on /metrics.

    A metric with labels has no sample until a label value is used; its names follow from
    its type, as the exposition format writes them.
    """
    names: set[str] = set()
    for family in registry.collect():
        if family.samples:
            names |= {sample.name for sample in family.samples}
        else:
            names |= {family.name + suffix for suffix in SUFFIXES[family.type]}
    return names


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def _promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_server.promtool(), *args],
        check=False,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_promtool_check_rules_passes() -> None:
    result = _promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = _promtool("test", "rules", RULES_TESTS.name, cwd=RULES_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts == {
        "SkewlessEndToEndP99OverSLO",
        "SkewlessConsumerLagGrowing",
        "SkewlessDeadLetterRateHigh",
        "SkewlessFeatureDriftPSI",
        "SkewlessWorkerDown",
        "SkewlessChampionChanged",
    }
    firing: set[str] = set()
    silent: set[str] = set()
    for case in yaml.safe_load(RULES_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert firing == alerts
    assert silent == alerts


def test_drift_alert_uses_the_default_psi_alert_threshold() -> None:
    (drift,) = [rule for rule in _rules() if rule.get("alert") == "SkewlessFeatureDriftPSI"]
    threshold = float(drift["expr"].rsplit(">", 1)[1])
    assert threshold == Settings.model_fields["drift_psi_alert"].default


def test_metric_names_reads_selectors_only() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{job="x", le=~"0.1|1e3"}[5m])))'
        " / ignoring(le) group_left sum(b:recorded) without (instance) > bool 1e3"
        " and on (job) c offset 5m"
    )
    assert metric_names(expr) == {"a_bucket", "b:recorded", "c"}


def test_exposed_names_include_histogram_series_and_labelled_metrics() -> None:
    names = exposed_names(ScoringMetrics().registry)
    for histogram in ("skewless_end_to_end_seconds", "skewless_feature_seconds"):
        assert {f"{histogram}_bucket", f"{histogram}_sum", f"{histogram}_count"} <= names
    assert {"skewless_events_in_total", "skewless_consumer_lag"} <= names
    assert {"skewless_dead_letters_total", "skewless_model_version"} <= names
    assert {"skewless_queue_depth", "skewless_delivery_wait_seconds_count"} <= names
    assert "skewless_events_in" not in names  # counters are exposed with _total only


def test_rules_use_only_metrics_the_worker_exposes() -> None:
    exposed = exposed_names(ScoringMetrics().registry)
    recorded = {rule["record"] for rule in _rules() if "record" in rule}
    for rule in _rules():
        unknown = metric_names(rule["expr"]) - exposed - recorded - PROMETHEUS_SERIES
        assert not unknown, f"{rule.get('alert') or rule.get('record')}: {sorted(unknown)}"


def test_dashboard_queries_use_only_metrics_the_worker_exposes() -> None:
    exposed = exposed_names(ScoringMetrics().registry)
    queries = _dashboard_queries()
    assert len(queries) >= 10
    for query in queries:
        assert metric_names(query), query
        unknown = metric_names(query) - exposed - PROMETHEUS_SERIES
        assert not unknown, f"{query}: {sorted(unknown)}"


def test_dashboard_is_importable_and_covers_the_operations_views() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [source["name"] for source in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    titles = " | ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "latency quantiles", "lag", "dead letters", "psi", "champion"):
        assert topic in titles, topic
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(
        runtime_dir=tmp_path, metrics_port=19108, http_port=18088, prometheus_scrape_interval_s=2
    )


def test_config_scrapes_worker_and_enricher_on_loopback_with_the_rules(settings: Settings) -> None:
    config = prometheus_server.config(settings)
    assert config["global"] == {"scrape_interval": "2s", "evaluation_interval": "2s"}
    assert config["rule_files"] == [str(RULES)]
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        prometheus_server.WORKER_JOB: ["127.0.0.1:19108"],
        prometheus_server.HTTP_JOB: ["127.0.0.1:18088"],
    }


def test_worker_without_metrics_port_is_not_scraped(tmp_path: Path) -> None:
    config = prometheus_server.config(load_settings(runtime_dir=tmp_path, metrics_port=0))
    jobs = [job["job_name"] for job in config["scrape_configs"]]
    assert jobs == [prometheus_server.HTTP_JOB]


def test_written_config_passes_promtool_check_config(settings: Settings) -> None:
    path = prometheus_server.write_config(settings)
    assert path.parent == settings.runtime_dir / "prometheus"
    result = _promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_rules())} rules found" in result.stdout
