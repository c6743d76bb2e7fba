"""`skewless serve-http`: the enricher front door over the same scoring core as the worker.

`POST /score` takes one transaction (a JSON object) or many (a JSON array) in the canonical
schema without the label and answers with the same score records the worker produces to
`fraud-scores`. The request is the event: it updates the streaming state exactly as a Kafka
event would, so both doors give the same score for the same transaction. `GET /health` and
`GET /metrics` (Prometheus) are there for operations.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.events import format_timestamp, parse_transactions
from serving.metrics import ScoringMetrics
from serving.scoring import ScoringCore
from serving.validation import EventLimits, StreamClock, validate_transactions
from serving.worker import score_bodies

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024


class ScoringHttpServer(ThreadingHTTPServer):
    """A threaded HTTP server holding the scoring core."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        core: ScoringCore,
        metrics: ScoringMetrics,
        threshold: float,
        limits: EventLimits,
    ) -> None:
        super().__init__(address, _Handler)
        self.core = core
        self.metrics = metrics
        self.threshold = threshold
        self.clock = StreamClock(limits)  # the HTTP door is one source of events
        self.lock = threading.Lock()  # one batch through the core at a time, as in the worker

    def score(self, items: list[Any]) -> tuple[int, dict[str, Any] | list[dict[str, Any]]]:
        """Status and body for a list of JSON transactions.

        The same parsing and range rules as the worker's (`serving.validation`; a request
        arrives when it is read); one rejected item rejects the request, nothing is scored.
        """
        parsed = parse_transactions([json.dumps(item).encode() for item in items])
        arrived = [round(time.time() * 1_000_000)] * len(items)
        with self.lock:  # one batch at a time through the clock and the core, as in the worker
            parsed = validate_transactions(parsed, arrived, [0] * len(items), self.clock)
            batch = None if parsed.rejected else self.core.score(parsed.columns)
            if batch is not None:
                self.core.write_online(batch)
        if batch is None:
            for _, exc in parsed.rejected:
                self.metrics.dead_letters.labels(reason=exc.code).inc()
            errors = [{"index": index, "reason": exc.reason} for index, exc in parsed.rejected]
            return HTTPStatus.UNPROCESSABLE_ENTITY, {"errors": errors}
        self.metrics.events_in.inc(len(batch))
        self.metrics.events_scored.inc(len(batch))
        scores = score_bodies(batch, self.threshold, format_timestamp(datetime.now(UTC)))
        return HTTPStatus.OK, scores


class _Handler(BaseHTTPRequestHandler):
    server: ScoringHttpServer

    def do_GET(self) -> None:
        if self.path == "/health":
            self._send(
                HTTPStatus.OK, {"status": "ok", "model_version": self.server.core.model.version}
            )
        elif self.path == "/metrics":
            body = generate_latest(self.server.metrics.registry)
            self._raw(HTTPStatus.OK, body, CONTENT_TYPE_LATEST)
        else:
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})

    def do_POST(self) -> None:
        if self.path != "/score":
            self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path}"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        if length <= 0 or length > MAX_BODY_BYTES:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "a JSON body up to 8 MiB is required"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, too deep, huge int
            self._send(HTTPStatus.BAD_REQUEST, {"error": f"not JSON: {exc}"})
            return
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "send an object or a non-empty array"})
            return
        status, body = self.server.score(items)
        if status == HTTPStatus.OK and single and isinstance(body, list):
            self._send(status, body[0])
        else:
            self._send(status, body)

    def _send(self, status: int, body: object) -> None:
        self._raw(status, json.dumps(body).encode(), "application/json")

    def _raw(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http: " + format, *args)
