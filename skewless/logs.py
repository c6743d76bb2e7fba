"""Logging of a command: our own lines on the console, the libraries' chatter in a log file.

Great Expectations, Feast, Spark, MLflow and Python's warnings write a great deal at INFO and
WARNING that says nothing to a person running `make demo`. The console shows our packages'
records, and anyone's errors; every record, warnings included, goes to `logs/skewless.log` in
the runtime folder, where it can be read when something goes wrong.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

OUR_PACKAGES = frozenset(
    {"skewless", "skewless_cli", "training", "serving", "monitoring", "__main__"}
)
"""Top-level packages whose records are shown on the console."""

LOG_FILE = Path("logs") / "skewless.log"
"""Where every record goes, under the runtime folder."""

LIBRARY_ENV = {
    # MLflow logs through a handler of its own, bypassing ours; its INFO lines are chatter.
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    # tqdm bars that leave `disable` to its default (Feast's materialization) are not drawn.
    "TQDM_DISABLE": "1",
}


class OursOrErrors(logging.Filter):
    """Passes our packages' records, and any package's errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] in OUR_PACKAGES or record.levelno >= logging.ERROR


def configure(console: logging.Handler, runtime_dir: Path | None, verbose: bool) -> Path | None:
    """Route records: ours (and errors) to `console`, all to the log file; returns its path.

    With `verbose`, the console shows every record at DEBUG, libraries included.
    """
    for variable, value in LIBRARY_ENV.items():
        os.environ.setdefault(variable, value)
    handlers: list[logging.Handler] = [console]
    if not verbose:
        console.addFilter(OursOrErrors())
    log_file = None
    if runtime_dir is not None:
        log_file = runtime_dir / LOG_FILE
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(to_file)
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=handlers)
    logging.captureWarnings(True)  # warnings become records of `py.warnings`: the file only
    for chatty in ("py4j", "urllib3", "kafka", "filelock", "matplotlib"):
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return log_file


@contextlib.contextmanager
def child_stderr_to_log() -> Iterator[None]:
    """Within the block, file descriptor 2 is the log file, so a process started there (the
    Spark JVM: `WARNING: Using incubator modules`, its own log lines) writes its stderr to the
    log file for its whole life. Without a log file, nothing changes."""
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not files:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with open(files[0].baseFilename, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def prints_to_log(library: str) -> Iterator[None]:
    """What `library` prints (not logs) within the block, on stdout or stderr, becomes INFO
    records of the logger `library`: the log file keeps them, the console does not show them
    (Feast's apply says "Deploying infrastructure for ..." with `print`, MLflow's
    registration "Created version '2' ..." with its own `eprint`)."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            yield
    finally:
        library_logger = logging.getLogger(library)
        for line in printed.getvalue().splitlines():
            if line.strip():
                library_logger.info("%s", line)
