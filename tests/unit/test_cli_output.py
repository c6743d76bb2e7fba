"""What the command line prints when its output is a pipe or a file, not a terminal."""

from __future__ import annotations

import io
import logging

from skewless.settings import load_settings
from skewless_cli.cli import demo_table, log_handler, output_console
from skewless_cli.demo import DemoResult

LONG_PATH = "/srv/skewless/" + "/".join(f"folder-{i:02d}" for i in range(12)) + "/report.html"


def _result() -> DemoResult:
    return DemoResult(
        model_version="3",
        alias="champion",
        metrics={"test_auc_roc": 0.87},
        replayed=1000,
        scored=1000,
        dead_letters=0,
        events_per_s=5000.0,
        verdict="no skew, no drift alert",
        report=LONG_PATH,
    )


def test_paths_are_printed_whole_when_output_is_not_a_terminal() -> None:
    assert len(LONG_PATH) > 120
    out = io.StringIO()
    output_console(file=out).print(demo_table(load_settings(), _result()))
    assert LONG_PATH in out.getvalue()


def test_log_lines_are_not_wrapped_when_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    output_console(file=out).print(f"report: {LONG_PATH}")
    assert out.getvalue() == f"report: {LONG_PATH}\n"


def test_log_lines_are_plain_and_unpadded_when_output_is_not_a_terminal() -> None:
    out = io.StringIO()
    logger = logging.getLogger("skewless.test.output")
    logger.propagate = False
    logger.addHandler(log_handler(out))
    logger.warning("report: %s", LONG_PATH)
    line = out.getvalue()
    assert line.endswith(f"WARNING report: {LONG_PATH}\n")
    assert "  \n" not in line and line.count("\n") == 1
