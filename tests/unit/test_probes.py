"""Readiness probes against loopback servers that do not speak the protocol.

Each misbehaving server stands for a real start-up situation: an echo is the TCP self-connect
(a client connected to its own port reads back its own request), an immediate close is a
server still starting, garbage is another program on the port. Every probe must say "not ready"
without raising, and waiting must end at its deadline with an error naming server and setting.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from skewless.services import kafka, mlflow_server, prometheus_server, redis_server
from skewless.services.process import (
    NOT_READY,
    Endpoint,
    ManagedProcess,
    ServiceError,
    probe,
    wait_ready,
)
from skewless.settings import Settings, load_settings

Handler = Callable[[socket.socket], None]


def _echo(conn: socket.socket) -> None:
    while data := conn.recv(65536):
        conn.sendall(data)


def _close_at_once(conn: socket.socket) -> None:
    conn.close()


def _garbage(conn: socket.socket) -> None:
    conn.sendall(b"\x00\xff\x13garbage \r\n\r\n\x7f" * 8)
    conn.recv(65536)


class MisbehavingServer:
    """A loopback TCP server that answers every connection with `handler`, on a thread."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> MisbehavingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                self.handler(conn)
            except OSError:
                return  # the client hung up first: nothing to answer


HANDLERS = {"echo": _echo, "close": _close_at_once, "garbage": _garbage}

PROBES: dict[str, tuple[Callable[[Settings], bool], Callable[[Settings], Endpoint], str]] = {
    "mlflow": (mlflow_server._health_ok, mlflow_server.endpoint, "mlflow_port"),
    "redis": (redis_server._pong, redis_server.endpoint, "redis_port"),
    "kafka": (kafka._has_live_broker, kafka.endpoint, "kafka_port"),
    "prometheus": (prometheus_server._ready, prometheus_server.endpoint, "prometheus_port"),
}
IS_READY = {
    "mlflow": mlflow_server.is_ready,
    "redis": redis_server.is_ready,
    "kafka": kafka.is_ready,
    "prometheus": prometheus_server.is_ready,
}


@pytest.fixture(params=sorted(HANDLERS))
def server(request: pytest.FixtureRequest) -> Iterator[MisbehavingServer]:
    with MisbehavingServer(HANDLERS[request.param]) as running:
        yield running


def _pointing_at(port: int, tmp_path: Path) -> Settings:
    return load_settings(
        runtime_dir=tmp_path,
        mlflow_port=port,
        redis_port=port,
        kafka_port=port,
        prometheus_port=port,
        service_start_timeout_s=1.5,
    )


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_against_a_server_that_does_not_speak_the_protocol_is_not_ready(
    name: str, server: MisbehavingServer, tmp_path: Path
) -> None:
    settings = _pointing_at(server.port, tmp_path)
    assert IS_READY[name](settings) is False
    check, _, _ = PROBES[name]
    reason = probe(lambda: check(settings), name)
    assert reason is not None
    assert server.connections > 0  # the probe did reach the server


@pytest.mark.parametrize("name", sorted(PROBES))
def test_waiting_ends_at_the_deadline_naming_server_and_settings(name: str, tmp_path: Path) -> None:
    check, endpoint_of, port_field = PROBES[name]
    with MisbehavingServer(_echo) as server:
        settings = _pointing_at(server.port, tmp_path)
        process = ManagedProcess(name, settings.runtime_dir)
        process.pid_file.parent.mkdir(parents=True)
        process.pid_file.write_text(f"{os.getpid()}\n")  # a live process that never answers
        started = time.monotonic()
        with pytest.raises(ServiceError) as caught:
            wait_ready(
                process,
                lambda: check(settings),
                settings.service_start_timeout_s,
                endpoint_of(settings),
            )
        elapsed = time.monotonic() - started
    message = str(caught.value)
    assert message.startswith(f"{name} did not answer at ")
    assert str(server.port) in message
    assert Settings.env_name(port_field) in message
    assert "SKEWLESS_SERVICE_START_TIMEOUT_S" in message
    assert "last probe: " in message
    # The deadline, plus at most one probe's own timeout.
    assert settings.service_start_timeout_s <= elapsed < settings.service_start_timeout_s + 8


def test_probe_turns_any_exception_into_a_reason_and_passes_a_ready_answer() -> None:
    def bad_status_line() -> bool:
        raise ValueError("GET /health HTTP/1.1")

    assert probe(bad_status_line, "x") == "ValueError: GET /health HTTP/1.1"
    assert probe(lambda: False, "x") == NOT_READY
    assert probe(lambda: True, "x") is None


def test_wait_ready_returns_once_the_check_passes(tmp_path: Path) -> None:
    process = ManagedProcess("late", tmp_path)
    process.pid_file.parent.mkdir(parents=True)
    process.pid_file.write_text(f"{os.getpid()}\n")
    calls = iter([False, False, True])
    wait_ready(process, lambda: next(calls), 5.0, Endpoint("late", "127.0.0.1:1", "SKEWLESS_X"))
    with pytest.raises(StopIteration):
        next(calls)
