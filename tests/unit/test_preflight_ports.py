"""The port check of the start-up checks: taken means another listener, not a dead one's
connections in TIME_WAIT (a worker restarted after kill -9 takes its port back)."""

from __future__ import annotations

import socket

import pytest

from serving.preflight import ConfigurationError, check_port_free


def test_a_listening_port_is_taken_and_a_dead_listener_s_port_is_free() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    with pytest.raises(ConfigurationError, match="SKEWLESS_METRICS_PORT"):
        check_port_free(port, "metrics_port")
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # the server side closes first: its end of the connection is in TIME_WAIT
    client.close()
    listener.close()
    check_port_free(port, "metrics_port")
