"""Command output: our lines on the console; libraries' chatter and warnings in the log file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging, sys, warnings
from pathlib import Path
from skewless import logs
console = logging.StreamHandler(sys.stderr)
console.setFormatter(logging.Formatter("%(message)s"))
logs.configure(console, Path(sys.argv[1]), verbose=False)
logging.getLogger("great_expectations.core").info("Skipping registering function f")
logging.getLogger("feast.repo").warning("experimental")
warnings.warn("The spark data source API is an experimental feature", RuntimeWarning)
logging.getLogger("training.pipeline").info("stage train ...")
logging.getLogger("mlflow.store").error("registry unreachable")
"""


def test_the_console_shows_our_lines_and_errors_the_file_everything(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    console = done.stderr.splitlines()
    assert console == ["stage train ...", "registry unreachable"]
    logged = (tmp_path / "logs" / "skewless.log").read_text()
    for line in ("Skipping registering", "experimental", "stage train", "registry unreachable"):
        assert line in logged
    assert "RuntimeWarning" in logged  # the warning, as a record of py.warnings


PRINTS = """
import logging, subprocess, sys
from pathlib import Path
from skewless import logs
console = logging.StreamHandler(sys.stderr)
console.setFormatter(logging.Formatter("%(message)s"))
logs.configure(console, Path(sys.argv[1]), verbose=False)
with logs.prints_to_log("feast"):
    print("Deploying infrastructure for terminal_risk")
    print("Created version '2' of model 'fraud-detector'.", file=sys.stderr)
with logs.child_stderr_to_log():
    subprocess.run(["sh", "-c", "echo 'WARNING: Using incubator modules' >&2"], check=True)
print("ours on stdout")
print("ours on stderr", file=sys.stderr)
subprocess.run(["sh", "-c", "echo 'a later child on stderr' >&2"], check=True)
"""


def test_library_prints_and_a_child_s_stderr_go_to_the_log_file(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PRINTS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines() == ["ours on stdout"]
    assert done.stderr.splitlines() == ["ours on stderr", "a later child on stderr"]
    logged = (tmp_path / "logs" / "skewless.log").read_text()
    assert "INFO feast: Deploying infrastructure for terminal_risk" in logged
    assert "INFO feast: Created version '2'" in logged
    assert "WARNING: Using incubator modules" in logged
