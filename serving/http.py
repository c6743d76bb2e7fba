"""`skewless serve-http`: the enricher front door over the same scoring core as the worker.

`POST /score` takes one transaction (a JSON object) or many (a JSON array) in the canonical
schema without the label and answers with the same score records the worker produces to
`fraud-scores`. The request is the event: it updates the streaming state exactly as a Kafka
event would, so both doors give the same score for the same transaction. `GET /health` and
`GET /metrics` (Prometheus) are there for operations.

The application is Starlette's, served by uvicorn. What a bad or hostile client can do is
bounded by the settings, and every answer of the application is JSON with the reason:
- a body over `SKEWLESS_HTTP_MAX_BODY_BYTES` gets 413, by its Content-Length before it is
  read, or as soon as a chunked body passes the limit; a body not fully sent within
  `SKEWLESS_HTTP_READ_TIMEOUT_S` gets 408;
- a body that is not JSON, or not an object or a non-empty array, gets 400; an event the
  worker would send to the dead-letter topic gets 422 with each rejected index and reason
  (one rejected item rejects the request, nothing is scored);
- an unknown route 404, a wrong method 405, a fault while scoring (Redis down) 503;
- beyond `SKEWLESS_HTTP_MAX_CONCURRENCY` open connections uvicorn answers 503 itself (plain
  text), and the listen queue holds `SKEWLESS_HTTP_BACKLOG` connections.
Scoring runs in a worker thread, one request at a time through the core (the stream clock and
the state see one batch at a time, as in the worker), so `/health` and `/metrics` answer while
a large request is scored.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from serving.events import format_timestamp, parse_transactions
from serving.metrics import ScoringMetrics
from serving.scoring import ScoringCore
from serving.validation import EventLimits, StreamClock, validate_transactions
from serving.web import AppServer
from serving.worker import score_bodies
from skewless.settings import Settings

logger = logging.getLogger(__name__)


class RequestError(Exception):
    """A request answered with `status` and `reason` before anything is scored."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class HttpLimits:
    """What one request may cost the enricher (see the module docstring)."""

    max_body_bytes: int
    read_timeout_s: float
    max_concurrency: int
    backlog: int

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            settings.http_max_body_bytes,
            settings.http_read_timeout_s,
            settings.http_max_concurrency,
            settings.http_backlog,
        )


class Enricher:
    """The scoring core behind the HTTP door, with its own stream clock."""

    def __init__(
        self,
        core: ScoringCore,
        metrics: ScoringMetrics,
        threshold: float,
        limits: EventLimits,
        http_limits: HttpLimits,
    ) -> None:
        self.core = core
        self.metrics = metrics
        self.threshold = threshold
        self.http_limits = http_limits
        self.clock = StreamClock(limits)  # the HTTP door is one source of events
        self.lock = threading.Lock()  # one batch at a time through the clock and the core

    def score(self, items: list[Any]) -> tuple[int, dict[str, Any] | list[dict[str, Any]]]:
        """Status and body for a list of JSON transactions.

        The same parsing and range rules as the worker's (`serving.validation`; a request
        arrives when it is read); one rejected item rejects the request, nothing is scored.
        """
        parsed = parse_transactions([json.dumps(item).encode() for item in items])
        arrived = [round(time.time() * 1_000_000)] * len(items)
        with self.lock:
            parsed = validate_transactions(parsed, arrived, [0] * len(items), self.clock)
            batch = None if parsed.rejected else self.core.score(parsed.columns)
            if batch is not None:
                self.core.write_online(batch)
            refused = self.core.state.take_refused()  # (labels are the worker's: logged here)
        for event in refused:
            logger.warning("a label the state refused (no transaction of its id): %s", event)
        if batch is None:
            for _, exc in parsed.rejected:
                self.metrics.dead_letters.labels(reason=exc.code).inc()
            errors = [{"index": index, "reason": exc.reason} for index, exc in parsed.rejected]
            return HTTPStatus.UNPROCESSABLE_ENTITY, {"errors": errors}
        self.metrics.events_in.inc(len(batch))
        self.metrics.events_scored.inc(len(batch))
        scores = score_bodies(batch, self.threshold, format_timestamp(datetime.now(UTC)))
        return HTTPStatus.OK, scores

    async def read_items(self, request: Request) -> tuple[list[Any], bool]:
        """The request's transactions and whether it sent one object; `RequestError` if
        the body is too large, too slow, or not an object or a non-empty array of JSON."""
        limit = self.http_limits.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            raise RequestError(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {limit} bytes"
            )
        try:
            async with asyncio.timeout(self.http_limits.read_timeout_s):
                body = bytearray()
                async for chunk in request.stream():
                    body += chunk
                    if len(body) > limit:
                        raise RequestError(
                            HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a body of at most {limit} bytes"
                        )
        except TimeoutError:
            raise RequestError(
                HTTPStatus.REQUEST_TIMEOUT,
                f"the body did not arrive within {self.http_limits.read_timeout_s:g} s",
            ) from None
        if not body:
            raise RequestError(HTTPStatus.BAD_REQUEST, "a JSON body is required")
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, too deep, huge int
            raise RequestError(HTTPStatus.BAD_REQUEST, f"not JSON: {exc}") from None
        single = isinstance(payload, dict)
        items = [payload] if single else payload
        if not isinstance(items, list) or not items:
            raise RequestError(HTTPStatus.BAD_REQUEST, "send an object or a non-empty array")
        return items, single


def create_app(enricher: Enricher) -> Starlette:
    """The Starlette application of the enricher: /score, /health, /metrics."""

    async def score(request: Request) -> Response:
        try:
            items, single = await enricher.read_items(request)
        except RequestError as rejected:
            return JSONResponse({"error": rejected.reason}, status_code=rejected.status)
        try:
            status, body = await run_in_threadpool(enricher.score, items)
        except Exception as exc:  # Redis down, a model failure: the client may retry
            logger.warning("http: scoring failed: %r", exc)
            return JSONResponse(
                {"error": f"scoring unavailable: {type(exc).__name__}: {exc}"},
                status_code=HTTPStatus.SERVICE_UNAVAILABLE,
            )
        if status == HTTPStatus.OK and single and isinstance(body, list):
            return JSONResponse(body[0])
        return JSONResponse(body, status_code=status)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "model_version": enricher.core.model.version})

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(enricher.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return JSONResponse(
            {"error": f"{exc.detail}: {request.method} {request.url.path}"},
            status_code=exc.status_code,
        )

    return Starlette(
        routes=[
            Route("/score", score, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


class EnricherServer(AppServer):
    """uvicorn serving the enricher on a loopback port; `port=0` takes a free one."""

    def __init__(self, enricher: Enricher, host: str, port: int) -> None:
        limits = enricher.http_limits
        super().__init__(
            create_app(enricher),
            host,
            port,
            max_concurrency=limits.max_concurrency,
            backlog=limits.backlog,
        )
        self.enricher = enricher
