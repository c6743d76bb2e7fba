"""Background server processes: start in their own process group, record the pid, stop whole.

Each server gets `<runtime>/run/<name>.pid` and `<runtime>/logs/<name>.log`. Readiness is a
probe polled against a deadline, never a fixed sleep.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from skewless.settings import Settings

logger = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    """A server could not be installed, started or reached."""


@dataclass(frozen=True)
class ManagedProcess:
    """Where one named server keeps its pid and log under the runtime folder."""

    name: str
    runtime_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "run" / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.runtime_dir / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        """The recorded pid if that process is still alive, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def start(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> int:
        """Start `argv` detached in a new session (its own process group) and record its pid."""
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        logger.info("started %s (pid %d), log %s", self.name, proc.pid, self.log_file)
        return proc.pid

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Stop the whole process group: SIGTERM, then SIGKILL at the deadline.

        Returns True if something was running.
        """
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        _signal_group(pid, signal.SIGTERM)
        if not wait_for(lambda: not _group_alive(pid), timeout_s):
            logger.warning("%s did not stop within %.0f s, killing it", self.name, timeout_s)
            _signal_group(pid, signal.SIGKILL)
            wait_for(lambda: not _group_alive(pid), 10.0)
        self.pid_file.unlink(missing_ok=True)
        logger.info("stopped %s (pid %d)", self.name, pid)
        return True

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the server's log, for error messages."""
        try:
            text = self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def port_open(host: str, port: int) -> bool:
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def wait_for(probe: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    """Poll `probe` until it returns True or the deadline passes; True if it succeeded."""
    deadline = time.monotonic() + timeout_s
    while True:
        if probe():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


ServerCheck = Callable[[], bool]
"""Asks a server once whether it answers; may raise on any failure to get a valid answer."""

NOT_READY = "it answered, but not as a ready server"


@dataclass(frozen=True)
class Endpoint:
    """A server as error messages name it: what, where, and the setting that moves it."""

    name: str
    address: str
    port_setting: str


def probe(check: ServerCheck, what: str) -> str | None:
    """None if `check` finds the server ready, else why not.

    Any failure to get a valid answer (connection refused or reset, a TCP self-connect that
    reads back its own request, a bad status line, a timeout, protocol garbage) means "not ready
    yet", never an error: the caller decides at its deadline.
    """
    try:
        if check():
            return None
    except Exception as exc:  # every failure of a probe is an answer: not ready
        reason = f"{type(exc).__name__}: {exc}"
        logger.debug("%s not ready: %s", what, reason)
        return reason
    return NOT_READY


def answers(check: ServerCheck, what: str) -> bool:
    """True if `check` finds the server ready; False on any failure, which is logged at debug."""
    return probe(check, what) is None


def already_running(process: ManagedProcess, ready: Callable[[], bool], endpoint: Endpoint) -> bool:
    """True if our own server answers already (start is then a no-op); raises `ServiceError`
    naming the port setting if another program answers there; False if nothing does."""
    if process.pid() is not None and ready():
        logger.info("%s already running at %s", endpoint.name, endpoint.address)
        return True
    if ready():
        raise ServiceError(
            f"another server already answers at {endpoint.address} where {endpoint.name} "
            f"should start; stop it or set {endpoint.port_setting}"
        )
    return False


def wait_ready(
    process: ManagedProcess, check: ServerCheck, timeout_s: float, endpoint: Endpoint
) -> None:
    """Poll `check` until it answers or the deadline passes, failing early if the process died.

    Raises `ServiceError` naming the server, its address, the last reason it was not ready and
    the settings to change, with the last lines of its log.
    """
    last: list[str | None] = ["no probe ran"]

    def ready_or_dead() -> bool:
        last[0] = probe(check, endpoint.name)
        return last[0] is None or process.pid() is None

    wait_for(ready_or_dead, timeout_s, interval_s=0.2)
    if last[0] is None:
        return
    if process.pid() is None:
        state = f"exited before answering at {endpoint.address}"
    else:
        deadline_setting = Settings.env_name("service_start_timeout_s")
        state = (
            f"did not answer at {endpoint.address} within {timeout_s:.0f} s ({deadline_setting});"
            f" last probe: {last[0]}; if another program uses that port, set "
            f"{endpoint.port_setting}"
        )
    raise ServiceError(
        f"{endpoint.name} {state}; last lines of {process.log_file}:\n{process.log_tail()}"
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only members are zombies is gone for our purposes.
    return any(
        _alive(int(entry.name))
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and _pgid_of(int(entry.name)) == pgid
    )


def _pgid_of(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)
