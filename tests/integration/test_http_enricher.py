"""The HTTP enricher under hostile clients and load: uvicorn on loopback, the real core.

Every answer is JSON with a reason; a client that sends too much, too slowly, or a few hundred
requests at once never gets a dropped connection. The scoring rules (422 for the events the
worker sends to the dead-letter topic) are in `test_worker_robustness.py`.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from serving.http import EnricherServer
from tests.conftest import (
    TrainedPlatform,
    event_body,
    private_settings,
    start_enricher,
    stop_enricher,
)

pytestmark = pytest.mark.integration

MAX_BODY = 4096
READ_TIMEOUT_S = 1.0
CONCURRENT = 300


@pytest.fixture(scope="module")
def enricher(trained_platform: TrainedPlatform) -> Iterator[EnricherServer]:
    """An enricher on its own state, with a small body limit and a short read timeout."""
    settings = private_settings(trained_platform, stream_state_prefix=f"test:{uuid.uuid4().hex}")
    server = start_enricher(settings, max_body_bytes=MAX_BODY, read_timeout_s=READ_TIMEOUT_S)
    yield server
    stop_enricher(server)


def _request(
    server: EnricherServer, path: str, body: bytes | None = None, method: str = "POST"
) -> tuple[int, str, Any]:
    """Status, content type and decoded JSON body of one request (errors included)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{path}", data=body, method=method
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], json.loads(error.read())


def _raw(server: EnricherServer, request: bytes, pause_s: float = 0.0) -> bytes:
    """Send raw bytes on one connection (then wait `pause_s`), and read the whole answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as connection:
        connection.sendall(request)
        time.sleep(pause_s)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer:
                head, _, body = answer.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0]:
                    break
        return answer


def _status_and_json(answer: bytes) -> tuple[int, Any]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(body)


def test_bad_requests_get_json_with_the_reason(enricher: EnricherServer) -> None:
    cases: list[tuple[str, str, bytes | None, int, str]] = [
        ("POST", "/score", b"", 400, "a JSON body is required"),
        ("POST", "/score", b"{not json", 400, "not JSON"),
        ("POST", "/score", b"[" * 3000, 400, "not JSON"),
        ("POST", "/score", b"[]", 400, "send an object or a non-empty array"),
        ("POST", "/score", b'"a string"', 400, "send an object or a non-empty array"),
        ("POST", "/score", b"\xff\xfe", 400, "not JSON"),
        ("POST", "/score", b"[" + b"1," * MAX_BODY + b"1]", 413, "a body of at most 4096 bytes"),
        ("GET", "/score", None, 405, "Method Not Allowed"),
        ("GET", "/nowhere", None, 404, "Not Found"),
        ("POST", "/health", b"{}", 405, "Method Not Allowed"),
    ]
    for method, path, body, status, reason in cases:
        answered, content_type, answer = _request(enricher, path, body, method)
        assert (answered, content_type) == (status, "application/json"), (path, body, answer)
        assert answer["error"].startswith(reason), answer


def test_a_chunked_body_over_the_limit_gets_413(enricher: EnricherServer) -> None:
    chunk = b"[" + b" " * 1000
    request = b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    request += (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * 5 + b"0\r\n\r\n"
    status, answer = _status_and_json(_raw(enricher, request))
    assert status == 413
    assert answer["error"] == f"a body of at most {MAX_BODY} bytes"


def test_a_body_that_never_arrives_gets_408_within_the_timeout(enricher: EnricherServer) -> None:
    request = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"[1,"
    started = time.monotonic()
    status, answer = _status_and_json(_raw(enricher, request))
    assert status == 408
    assert answer["error"] == f"the body did not arrive within {READ_TIMEOUT_S:g} s"
    assert time.monotonic() - started < READ_TIMEOUT_S + 10


def test_a_lying_content_length_is_413_before_the_body_is_read(enricher: EnricherServer) -> None:
    request = b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n[1]"
    status, answer = _status_and_json(_raw(enricher, request))
    assert status == 413
    assert "at most" in answer["error"]


def test_a_few_hundred_concurrent_requests_all_get_their_score(
    enricher: EnricherServer, trained_platform: TrainedPlatform
) -> None:
    rows = trained_platform.transactions.sort_values("tx_datetime").tail(CONCURRENT)
    bodies = [json.dumps(event_body(row)).encode() for _, row in rows.iterrows()]
    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(lambda body: _request(enricher, "/score", body), bodies))
        status, _, health = _request(enricher, "/health", method="GET")
    assert status == 200 and health["status"] == "ok"
    assert [status for status, _, _ in answers] == [200] * CONCURRENT
    scored = {answer["transaction_id"]: answer["score"] for _, _, answer in answers}
    assert sorted(scored) == sorted(int(t) for t in rows["transaction_id"])
    assert all(0.0 <= score <= 1.0 for score in scored.values())
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{enricher.port}/metrics", timeout=30)
    assert b"skewless_events_scored_total" in metrics.read()
