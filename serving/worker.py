"""`skewless serve`: the Kafka scoring worker (transactions in, fraud scores out).

One loop per micro-batch: poll transactions (at most `batch_max_events`, waiting at most
`batch_max_wait_ms`), read the labels topic up to its end as of that moment and store those
labels in the state (`serving.labels`), parse and range-check (`serving.validation`:
malformed events, amounts out of bounds, events too late or too far ahead go to the
dead-letter topic with the reason; the rest of the batch goes on) and give the batch to the
compute stage, which adds it to the state and scores it through the shared core. Once it is
computed, settle the batch before (below), make this batch's scores, feature log and dead
letters and hand it to the delivery stage (`serving.delivery`), which writes its Feast online
rows, produces its records and commits it while the loop goes on: its offsets after the
acknowledgements (at-least-once), or a Kafka transaction holding its records and offsets
(exactly-once).

Three stages overlap, as the guide's pipelined inference has them: the loop reads batch n+1
and the labels due before it from Kafka while the compute stage, a thread of its own, waits
for Redis to add batch n to the state and compute its windows (the cost that dominates a
batch), and the delivery stage writes batch n-1's online rows, waits for its
acknowledgements and commits it. The labels read for batch n+1 go into the state only once
batch n is computed, so no batch sees labels read after its transactions. Queues are bounded:
each stage holds one batch (`skewless_queue_depth{stage="compute"|"delivery"}`; the time a
computed batch waits for the one before is `skewless_delivery_wait_seconds`), the consumer's
fetch buffer `max_poll_records` and the partition fetch size. Batches adapt to the load by
themselves: a poll returns what has arrived, up to `batch_max_events`, so a quiet stream is
scored in small batches at once, and while a batch is computed the next gathers what arrives
until it is ready. Per partition, batches are produced and committed in order. When a batch
is not committed, it and the batches read after it are read again (their state updates are
idempotent): each partition from where its delivery is known to have ended (`_resume`).

A crash therefore re-scores at most the two batches scored but not committed, which in
exactly-once were never visible to `read_committed` readers; scores are keyed by
`transaction_id`, so an at-least-once consumer deduplicating by key sees every transaction
once. Only a fenced or unauthorized producer stops the worker.

Every Kafka client is kafka-python's public `KafkaConsumer` or `KafkaProducer`. The
transactions are read with `isolation_level='read_committed'`, so a transactional producer
upstream is read only once committed.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from types import FrameType

import numpy as np
import orjson
import pandas as pd
import redis
from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from kafka.structs import ConsumerGroupMetadata, OffsetAndMetadata

from serving.alignment import held_back
from serving.delivery import Delivery, DeliveryError, DeliveryStoppedError, Outgoing
from serving.events import (
    REASON_LABEL_UNKNOWN_TRANSACTION,
    REASON_PROCESSING_FAILED,
    ParsedBatch,
    dead_letter,
    dead_letter_key,
    format_timestamp,
    iso_times,
    parse_labels,
    parse_transactions,
    unknown_label_dead_letter,
    without_early_labels,
)
from serving.labels import LabelReader, Labels
from serving.metrics import ScoringMetrics
from serving.scoring import ScoredBatch, ScoringCore, build_core
from serving.validation import EventLimits, StreamClock, arrival_micros, validate_transactions
from skewless.model_runtime import reference_statistics
from skewless.psi import RollingDrift
from skewless.settings import Settings

logger = logging.getLogger(__name__)

FEATURE_LOG_ROWS_PER_RECORD = 500
"""Feature-log records carry up to this many rows (about 350 KiB, under Kafka's 1 MiB)."""

DRIFT_WINDOW_EVENTS = 10_000
"""The rolling drift gauges cover the last this many scored events."""

DRIFT_REFRESH_S = 1.0
"""The drift gauges are recomputed at most this often."""

FAULT_FIRST_BACKOFF_S = 0.2
FAULT_MAX_BACKOFF_S = 10.0
"""A batch stopped by a fault of a server is read again after a wait that doubles from the
first to the largest backoff while the fault lasts."""

COMMITTED_TIMEOUT_MS = 30_000
"""How long reading a partition's committed offset may take before it counts as a fault."""

ISOLATION_LIMIT = 3
"""Events of one batch that may each fail alone and go to the dead-letter topic; beyond that
the failure is taken for a fault of the scoring itself (every event would fail) and waited out,
so that a broken model or state never empties the stream into the dead-letter topic."""

PARTITION_FETCH_BYTES = 64 * 1024
"""Most bytes of one partition that one fetch brings (a few hundred transactions).

kafka-python keeps one fetched chunk per partition and hands out a chunk's records before the
next partition's, so with a backlog on several partitions one partition is read at most about
two chunks ahead of another. With its default chunk (1 MiB, thousands of events) a worker
starting on a backlog read one partition days of event time ahead of the other: an entity fed
by several partitions (a terminal, by every customer's partition) then had its state's
watermark moved that far ahead, the state dropped what lay more than the allowed lateness
behind it, and the windows of the partition read behind were served as unknown (NaN). A
producer's record batch is handed out whole, however large: the partitions are also held in
step by their stream times (`PARTITION_SKEW_SHARE`)."""

PARTITION_SKEW_SHARE = 0.25
"""The worker's partitions are read within this share of the allowed lateness of each other,
in stream time (`serving.alignment`): the state keeps what an entity's latest event needs plus
the allowed lateness, so the partition read behind finds its windows whole. The rest of the
lateness is left for the span of a batch and of a partition's own disorder."""

POLL_WHILE_COMPUTING_MS = 2
"""While a batch is computed, the next one is gathered in polls this short, until the
computed batch is ready or the next one full."""

BATCH_DEPENDENCIES = ("redis", "kafka", "scoring")
"""Faults a committed batch proves over (the registry's are the champion watcher's)."""

_REDIS_FAULT_REPLIES = ("OOM", "READONLY", "MASTERDOWN", "LOADING", "NOSCRIPT", "BUSY")
_REDIS_FAULTS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    # a Redis Cluster in flux after `redis_batch`'s own retries: down, slots moving, unserved
    redis.exceptions.ClusterError,
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.SlotNotCoveredError,
)


class ScoringFaultError(RuntimeError):
    """Too many events of one batch failed alone: the scoring fails, not the events."""


def fault_dependency(exc: BaseException) -> str | None:
    """Which server's fault `exc` is (redis, kafka, scoring), or None when it is not a fault
    to wait out: a bad event (isolated by bisecting) or a stopped producer (fatal).

    Faults: Redis unreachable or restarting (after the client's own retries) or answering that
    it cannot write now, a Redis Cluster down or moving slots; any Kafka error or failed
    delivery (Redis's, when the delivery stage failed to write the online rows);
    `ScoringFaultError`.
    """
    cause = exc.__cause__
    if isinstance(exc, DeliveryError) and cause is not None and fault_dependency(cause) == "redis":
        return "redis"
    if isinstance(exc, DeliveryError | KafkaError) and not isinstance(exc, DeliveryStoppedError):
        return "kafka"
    if isinstance(exc, ScoringFaultError):
        return "scoring"
    reply = str(exc)
    redis_fault = isinstance(exc, _REDIS_FAULTS) or (
        isinstance(exc, redis.exceptions.ResponseError)
        and (reply.startswith(_REDIS_FAULT_REPLIES) or "function not found" in reply.lower())
    )
    return "redis" if redis_fault else None


@dataclass
class WorkerStats:
    """What a bounded run did."""

    consumed: int = 0
    scored: int = 0
    dead_letters: int = 0
    labels: int = 0
    batches: int = 0
    seconds: float = 0.0
    versions: set[str] = field(default_factory=set)
    rewound: int = 0
    """Batches read again after a failed delivery or commit."""

    def add(self, batch: WorkerStats) -> None:
        """Count in a committed batch."""
        self.consumed += batch.consumed
        self.scored += batch.scored
        self.dead_letters += batch.dead_letters
        self.batches += batch.batches
        self.versions |= batch.versions


@dataclass
class _Handed:
    """A batch in the delivery stage, and what is done with it once committed."""

    records: list[ConsumerRecord]
    stats: WorkerStats
    refused: list[bytes]
    """Dead letters of refused labels it carries (kept for the next batch if it fails)."""
    codes: list[str]
    """The reason code of each of its dead letters."""
    batch: ScoredBatch | None
    label_positions: dict[TopicPartition, int]


@dataclass
class _Computing:
    """A batch whose features and scores are being computed in the compute stage."""

    records: list[ConsumerRecord]
    membership: ConsumerGroupMetadata
    """The consumer's group metadata when they were read (`Delivery.hand_over`)."""
    parsed: ParsedBatch
    scored: Future[ScoredBatch] | None
    """The compute stage's work (None when the batch has no valid event)."""
    label_positions: dict[TopicPartition, int]
    """Where the labels in the state before it were read to."""


def score_bodies(
    batch: ScoredBatch, threshold: float, scored_at: str, times: list[str] | None = None
) -> list[dict[str, object]]:
    """The `fraud-scores` bodies of a scored batch, in row order (`times`: its ISO times).

    Built column-wise (no per-row pandas access): this runs for every event.
    """
    tx = batch.transactions
    missing = batch.defaulted
    if missing.any():
        names = batch.feature_names
        defaulted = [[n for n, f in zip(names, row, strict=True) if f] for row in missing]
    else:
        defaulted = [[] for _ in range(len(batch))]
    model = batch.model
    return [
        {
            "transaction_id": transaction_id,
            "customer_id": customer,
            "terminal_id": terminal,
            "tx_datetime": when,
            "score": score,
            "is_fraud": flagged,
            "model_name": model.name,
            "model_version": model.version,
            "feature_service": model.feature_service,
            "defaulted_features": off,
            "degraded": degraded,
            "scored_at": scored_at,
        }
        for transaction_id, customer, terminal, when, score, flagged, off, degraded in zip(
            tx["transaction_id"].tolist(),
            tx["customer_id"].tolist(),
            tx["terminal_id"].tolist(),
            times if times is not None else iso_times(tx["tx_datetime"]),
            batch.scores.astype(float).tolist(),
            (batch.scores >= threshold).tolist(),
            defaulted,
            batch.degraded.tolist(),
            strict=True,
        )
    ]


def feature_log_record(
    batch: ScoredBatch, rows: np.ndarray, scored_at: str, times: list[str] | None = None
) -> bytes:
    """One feature-log record: the exact vectors used for `rows` of the batch, in columns.

    `{"model_name", "model_version", "feature_service", "scored_at"}` once, then one list per
    key column (`transaction_id`, `customer_id`, `terminal_id`, `tx_datetime`, `score`) and
    `"features": {name: list}`, with null where a feature was missing (the model's default
    stood in). `monitoring.feature_log` reads it back. `times`: the batch's ISO times.
    """
    tx = batch.transactions
    model = batch.model
    every_time = times if times is not None else iso_times(tx["tx_datetime"])
    body = {
        "model_name": model.name,
        "model_version": model.version,
        "feature_service": model.feature_service,
        "scored_at": scored_at,
        "transaction_id": np.asarray(tx["transaction_id"], dtype=np.int64)[rows],
        "customer_id": np.asarray(tx["customer_id"], dtype=np.int64)[rows],
        "terminal_id": np.asarray(tx["terminal_id"], dtype=np.int64)[rows],
        "tx_datetime": [every_time[row] for row in rows.tolist()],
        "score": np.asarray(batch.scores, dtype=np.float64)[rows],
        "features": {
            name: np.ascontiguousarray(batch.features[rows, column])
            for column, name in enumerate(batch.feature_names)
        },
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


class Worker:
    """The consumer-group worker around a `ScoringCore`."""

    def __init__(self, settings: Settings, core: ScoringCore, metrics: ScoringMetrics) -> None:
        self.settings = settings
        self.core = core
        self.metrics = metrics
        self._stopping = False
        self.consumer = KafkaConsumer(
            settings.topic_transactions,
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=settings.consumer_group,
            client_id="skewless-worker",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=settings.batch_max_events,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            fetch_max_wait_ms=max(1, settings.batch_max_wait_ms),
            session_timeout_ms=10_000,
            isolation_level="read_committed",
        )
        self.labels = LabelReader(
            settings.kafka_bootstrap, settings.topic_labels, f"{settings.consumer_group}-labels"
        )
        self.clock = StreamClock(EventLimits.from_settings(settings))
        self._max_skew_us = round(self.clock.limits.allowed_lateness_us * PARTITION_SKEW_SHARE)
        self.delivery = Delivery(settings, self.consumer, client_id="skewless-worker")
        core.watcher.on_poll = self._registry_health
        self._label_dead_letters: list[tuple[bytes, str]] = []
        """Dead-letter records of the malformed labels read since the last batch, and codes."""
        self._refused_dead_letters: list[bytes] = []
        """Dead-letter records of the labels the state refused, until a batch commits them
        (kept when a batch is read again: the state will not refuse them a second time)."""
        self._compute_stage = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="skewless-compute"
        )
        self._computing: _Computing | None = None
        """The batch in the compute stage, until handed over to the delivery stage."""
        self._handed: _Handed | None = None
        """The batch in the delivery stage, until settled."""
        self._failed: _Handed | None = None
        """A batch the delivery stage did not commit, until it is read again."""
        self._resuming = False
        """A rewind's `_resume` has not succeeded yet: nothing is read until it does."""
        self._generation: int | None = None
        """The consumer group generation of the last poll (each change is logged)."""
        self._first_read: dict[TopicPartition, int] = {}
        """The first offset this worker read of each partition (where `_resume` reads from a
        partition without a committed or settled offset)."""
        self._labels_stored: dict[TopicPartition, int] = {}
        """Where the labels in the state were read to (the labels read for the next batch, while
        one is computed, are not in it yet)."""
        self._label_positions: dict[TopicPartition, int] = {}
        """Where the labels were read to when the last committed batch was handed over."""
        self.stats = WorkerStats()
        """What the committed batches did (`run`'s result)."""
        self._sampler = np.random.default_rng(0)
        self._drift: RollingDrift | None = None
        self._drift_version = ""
        self._drift_pending: list[np.ndarray] = []
        self._drift_refreshed = 0.0
        self._load_drift_reference(core.model.version)

    def _registry_health(self, failure: Exception | None) -> None:
        if failure is None:
            self.metrics.recovered("registry")
        else:
            self.metrics.fault("registry", failure)

    def stop(self, *_: object) -> None:
        """Finish the current batch, commit, close (SIGTERM, Ctrl-C)."""
        self._stopping = True

    def install_signal_handlers(self) -> None:
        def handler(signum: int, frame: FrameType | None) -> None:
            logger.info("signal %d: stopping after this batch", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _store_labels(self, labels: Labels) -> int:
        """Labels read from the topic (`LabelReader.catch_up`) into the state; malformed ones
        become dead letters, sent with the next batch handed over.

        The worker reads the labels topic up to the end it has once a batch's transactions
        were fetched, and stores them before the batch is computed, so every label readable
        before its transactions is in the state when they are scored (`serving.labels`).
        """
        if not labels.values:
            self._labels_stored = self.labels.positions()
            return 0
        parsed = without_early_labels(parse_labels(labels.values), labels.published_ms)
        for index, exc in parsed.rejected:  # sent with the next batch, in its transaction
            tp, offset = labels.origins[index]
            value = labels.values[index]
            self._label_dead_letters.append(
                (dead_letter(value, exc.reason, tp.topic, tp.partition, offset), exc.code)
            )
        stored = self.core.state.add_labels(parsed.columns) if len(parsed) else 0
        self._labels_stored = self.labels.positions()
        self._take_refused()
        if stored:
            self.metrics.labels_in.inc(stored)
        return stored

    def _take_refused(self) -> None:
        """Dead letters of the labels the state refused (`serving.events`, "Identity")."""
        entity_keys = {agg.declaration.name: agg.declaration.entity_key
                       for agg in self.core.state.aggregations}  # fmt: skip
        for event in self.core.state.take_refused():
            self._refused_dead_letters.append(
                unknown_label_dead_letter(
                    event, entity_keys[event.declaration], self.settings.topic_labels
                )
            )

    def run(self, max_events: int | None = None, idle_exit_s: float | None = None) -> WorkerStats:
        """Score until stopped, `max_events` consumed, or no event for `idle_exit_s`; what the
        committed batches did."""
        stats = self.stats
        started = time.monotonic()
        last_event = started
        backoff = FAULT_FIRST_BACKOFF_S
        try:
            while not self._stopping:
                if self._resuming and not self._resume_or_wait(backoff):
                    backoff = min(backoff * 2, FAULT_MAX_BACKOFF_S)
                    continue
                if max_events is not None and self._consumed() >= max_events:
                    break
                budget = self.settings.batch_max_events
                if max_events is not None:
                    budget = min(budget, max_events - self._consumed())
                polled, membership = self._poll(budget)
                self._log_membership(membership)
                for tp, batch in polled.items():
                    if batch:
                        self._first_read.setdefault(tp, batch[0].offset)
                quiet = not any(polled.values())
                records = [] if quiet else self._in_step(polled)
                if not quiet:
                    last_event = time.monotonic()
                try:
                    # The labels due before `records` are read while the batch before is still
                    # computed, or once it is handed over if it is ready (its latency first).
                    fetched = self.labels.catch_up() if records and self._computing_now() else None
                    self._finish_isolating()
                    if records and fetched is None:
                        fetched = self.labels.catch_up()
                    if not records:  # quiet, or all read too far ahead (read again later)
                        self._settle()
                        idle = time.monotonic() - last_event
                        if quiet and idle_exit_s is not None and idle > idle_exit_s:
                            break
                        continue
                    labels = self._store_labels(fetched or Labels())
                    self._start_isolating(records, membership)
                except Exception as exc:
                    dependency = fault_dependency(exc)
                    if dependency is None:
                        raise
                    self._wait_out(records, dependency, exc, backoff)
                    stats.rewound += 1
                    backoff = min(backoff * 2, FAULT_MAX_BACKOFF_S)
                    continue
                backoff = FAULT_FIRST_BACKOFF_S
                for dependency in BATCH_DEPENDENCIES:
                    self.metrics.recovered(dependency)
                stats.labels += labels
        finally:
            self.close()
            stats.seconds = time.monotonic() - started
        return stats

    def _consumed(self) -> int:
        """Events of the committed batches and of the batches in the compute and delivery
        stages."""
        computing = len(self._computing.records) if self._computing else 0
        return (
            self.stats.consumed + computing + (self._handed.stats.consumed if self._handed else 0)
        )

    def _computing_now(self) -> bool:
        """Whether the compute stage is still at work on its batch."""
        scored = self._computing.scored if self._computing else None
        return scored is not None and not scored.done()

    def _poll(
        self, budget: int
    ) -> tuple[dict[TopicPartition, list[ConsumerRecord]], ConsumerGroupMetadata]:
        """The next batch's records: what arrives within `batch_max_wait_ms`, or, while a
        batch is being computed, what arrives until it is ready (at most `budget`); and the
        group membership they were read in (`Delivery.hand_over`): the consumer's after the
        first poll that returned records, so that a rebalance during a later one (a poll can
        run one) makes the broker refuse the batch's offsets."""
        computing = self._computing.scored if self._computing else None
        if computing is None:
            polled = self.consumer.poll(
                timeout_ms=max(1, self.settings.batch_max_wait_ms), max_records=budget
            )
            return polled, self.consumer.group_metadata()
        polled = {}
        membership = None
        gathered = 0
        while gathered < budget and not computing.done():
            more = self.consumer.poll(
                timeout_ms=POLL_WHILE_COMPUTING_MS, max_records=budget - gathered
            )
            if membership is None and any(more.values()):
                membership = self.consumer.group_metadata()
            for tp, records in more.items():
                polled.setdefault(tp, []).extend(records)
                gathered += len(records)
        return polled, membership or self.consumer.group_metadata()

    def _log_membership(self, membership: ConsumerGroupMetadata) -> None:
        """Log each change of the worker's consumer group generation: a rebalance, or the
        membership lost (a broker fault can take it) and the partitions read again from their
        committed offsets."""
        if membership.generation_id == self._generation:
            return
        self._generation = membership.generation_id
        if membership.generation_id < 0:
            logger.info("consumer group %s: not a member now (joining, or membership lost)",
                        membership.group_id)  # fmt: skip
            return
        partitions = sorted(tp.partition for tp in self.consumer.assignment())
        logger.info("consumer group %s: generation %d, partitions %s of %s",
                    membership.group_id, membership.generation_id, partitions,
                    self.settings.topic_transactions)  # fmt: skip

    def _wait_out(
        self, records: list[ConsumerRecord], dependency: str, exc: Exception, backoff: float
    ) -> None:
        """A fault of `dependency` stopped the batch: show it, wait, read the batch again."""
        logger.warning("%s fault, batch of %d events read again in %.1f s: %r",
                       dependency, len(records), backoff, exc)  # fmt: skip
        self.metrics.fault(dependency, exc)
        self._resuming = True  # whatever comes of the rewind, `run` resumes before it reads
        try:
            self._rewind()
        except DeliveryStoppedError:
            raise  # fenced: the one Kafka failure that stops the worker
        except Exception as rewind_failure:  # (local work: not expected)
            logger.warning("rewind after a fault: %r", rewind_failure)
        self._pause(backoff)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.05)

    def _resume_or_wait(self, backoff: float) -> bool:
        """`_resume` after a rewind; whether it succeeded (else the fault was shown and
        waited for `backoff`)."""
        try:
            self._resume()
        except DeliveryStoppedError:
            raise  # fenced: the one Kafka failure that stops the worker
        except Exception as exc:
            dependency = fault_dependency(exc)
            if dependency is None:
                raise
            logger.warning("%s fault, reading resumes in %.1f s at the earliest: %r",
                           dependency, backoff, exc)  # fmt: skip
            self.metrics.fault(dependency, exc)
            self._pause(backoff)
            return False
        return True

    def _resume(self) -> None:
        """What a rewind needs from Kafka before the worker reads again: a new producer
        (`Delivery.abort`), then every assigned partition read from where delivery is known to
        have ended, whatever batches a fault dropped on the way (a batch being isolated, say):

        - exactly-once: the group's committed offset. A batch whose commit failed in the worker
          may have been committed by the broker (its answer lost): reading on from its first
          offsets would score it twice. The offsets are read after the new producer's
          `init_transactions`, which completes that commit if the broker had begun it;
        - at-least-once: the offset after the last batch this worker delivered (`settled`), or
          the group's committed one if that is further (another worker's, after a rebalance).

        A partition with neither (a new group) is read again from the first offset this worker
        read of it: nothing of it was delivered."""
        self.delivery.abort()
        for tp in self.consumer.assignment():
            known = [
                offset
                for offset in (
                    self.consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS),
                    self.delivery.settled(tp),
                )
                if offset is not None
            ]
            if known:
                self.consumer.seek(tp, max(known))
            elif tp in self._first_read:
                self.consumer.seek(tp, self._first_read[tp])
        self._resuming = False

    def _attempt(self, step: Callable[[], None]) -> Exception | None:
        """Run a step of a batch (`_start`, `_finish`, `_process`); a failure that is not a
        server's fault is returned (the batch dropped from the compute stage, the one before
        settled, the producer's batch aborted) for the caller to isolate, a fault or a failed
        delivery raises."""
        try:
            step()
        except Exception as exc:
            if isinstance(exc, DeliveryError) or fault_dependency(exc) is not None:
                raise
            self._drop_computing()
            self._settle()  # the batch before is not this one's to drop
            self.delivery.abort()
            return exc
        return None

    def _start_isolating(
        self, records: list[ConsumerRecord], membership: ConsumerGroupMetadata
    ) -> None:
        """`_start`; if it fails for a reason that is not a fault of a server, the batch is
        isolated (`_isolate`) at once."""
        error = self._attempt(partial(self._start, records, membership))
        if error is not None:
            self._isolate(records, membership, error)

    def _finish_isolating(self) -> None:
        """`_finish` the batch in the compute stage, if any; if it fails for a reason that is
        not a fault of a server, the batch is isolated (`_isolate`)."""
        computing = self._computing
        if computing is None:
            return
        error = self._attempt(self._finish)
        if error is not None:
            self._isolate(computing.records, computing.membership, error)

    def _isolate(
        self, records: list[ConsumerRecord], membership: ConsumerGroupMetadata, error: Exception
    ) -> None:
        """A batch that failed for a reason that is not a fault of a server is bisected until
        the events that fail alone are found; each goes to the dead-letter topic with the error
        as its reason, the others are scored (`ISOLATION_LIMIT`)."""
        logger.warning("batch of %d events failed (%r): isolating the cause",
                       len(records), error)  # fmt: skip
        self._bisect(records, membership, [], error)

    def _bisect(
        self,
        records: list[ConsumerRecord],
        membership: ConsumerGroupMetadata,
        failed: list[ConsumerRecord],
        error: Exception,
    ) -> None:
        """Records that failed together with `error`: each half is tried alone."""
        if len(records) == 1:
            self._dead_letter_alone(records[0], membership, failed, error)
            return
        middle = len(records) // 2
        for half in (records[:middle], records[middle:]):
            half_error = self._attempt(partial(self._process, half, membership))
            if half_error is not None:
                self._bisect(half, membership, failed, half_error)

    def _dead_letter_alone(
        self,
        record: ConsumerRecord,
        membership: ConsumerGroupMetadata,
        failed: list[ConsumerRecord],
        exc: Exception,
    ) -> None:
        """One event that failed on its own: to the dead-letter topic, its offset committed.

        More than `ISOLATION_LIMIT` such events in one batch mean the fault is not theirs (a
        model or a state that fails for everything): the batch is then a fault to wait out.
        """
        failed.append(record)
        if len(failed) > ISOLATION_LIMIT:
            raise ScoringFaultError(
                f"{len(failed)} events of one batch failed alone, the last with {exc!r}"
            ) from exc
        reason = f"{REASON_PROCESSING_FAILED}: {type(exc).__name__}: {exc}"
        self._settle()
        letter = dead_letter(record.value, reason, record.topic, record.partition, record.offset)
        self.delivery.deliver(
            [(self.settings.topic_dead_letter, dead_letter_key(record.key), letter)],
            _next_offsets([record]),
            membership,
        )
        self.stats.add(WorkerStats(consumed=1, dead_letters=1, batches=1))
        self.metrics.dead_letters.labels(reason=REASON_PROCESSING_FAILED).inc()
        self.metrics.events_in.inc()
        logger.warning("%s@%d to the dead-letter topic: %s", record.topic, record.offset, reason)

    def _process(self, records: list[ConsumerRecord], membership: ConsumerGroupMetadata) -> None:
        """Compute one batch and its records, settle the batch before, hand this one to the
        delivery stage, waiting for each step."""
        self._start(records, membership)
        self._finish()

    def _start(self, records: list[ConsumerRecord], membership: ConsumerGroupMetadata) -> None:
        """Parse and range-check a batch, and give its valid events to the compute stage,
        which adds them to the state and scores them while the worker reads the next batch."""
        if self._computing is not None:
            raise RuntimeError("a batch is already in the compute stage: finish it first")
        stamps = np.fromiter((r.timestamp for r in records), np.int64, len(records))
        parsed = validate_transactions(
            parse_transactions([record.value for record in records]),
            arrival_micros(stamps, int(time.time() * 1000)),
            np.fromiter((r.partition for r in records), np.int64, len(records)),
            self.clock,
        )
        self.metrics.consumer_lag.set(self._lag())
        valid = [records[index] for index in parsed.rows]
        scored = self._compute_stage.submit(self._compute, parsed, valid) if valid else None
        self._computing = _Computing(records, membership, parsed, scored, self._labels_stored)
        self.metrics.queue_depth.labels(stage="compute").set(1)

    def _drop_computing(self) -> _Computing | None:
        """Take the batch out of the compute stage once its work is over (whatever came of
        it); it is not handed over."""
        computing, self._computing = self._computing, None
        if computing is not None and computing.scored is not None:
            try:
                computing.scored.result()
            except Exception as exc:  # (dropped either way)
                logger.debug("batch dropped from the compute stage: %r", exc)
        self.metrics.queue_depth.labels(stage="compute").set(0)
        return computing

    def _finish(self) -> None:
        """Wait for the batch in the compute stage, make its records, settle the batch before,
        hand this one to the delivery stage. A failure leaves it in the compute stage, for
        `_rewind` (a fault) or `_attempt` (isolated) to take."""
        computing = self._computing
        if computing is None:
            return
        records, parsed = computing.records, computing.parsed
        batch = None
        if computing.scored is not None:
            batch = computing.scored.result()
            self._take_refused()
        stats = WorkerStats(consumed=len(records), batches=1)
        scores = self._score_records(batch, stats) if batch is not None else []
        waiting = time.perf_counter()
        self._settle()  # (a failure raises here, before this batch took any dead letter)
        self.metrics.delivery_wait.observe(time.perf_counter() - waiting)
        dead_letter_topic = self.settings.topic_dead_letter
        outgoing: list[Outgoing] = []
        for index, exc in parsed.rejected:
            record = records[index]
            letter = dead_letter(
                record.value, exc.reason, record.topic, record.partition, record.offset
            )
            outgoing.append((dead_letter_topic, dead_letter_key(record.key), letter))
        label_dead_letters, self._label_dead_letters = self._label_dead_letters, []
        outgoing += [(dead_letter_topic, None, value) for value, _ in label_dead_letters]
        outgoing += scores
        refused, self._refused_dead_letters = self._refused_dead_letters, []
        outgoing += [(dead_letter_topic, None, value) for value in refused]
        stats.dead_letters = len(parsed.rejected) + len(label_dead_letters) + len(refused)
        # The online rows, then every score and dead letter acknowledged (or in the
        # transaction), before the commit. The rows are idempotent: a batch read again writes
        # the same ones.
        self.delivery.hand_over(
            outgoing,
            _next_offsets(records),
            computing.membership,
            before=None if batch is None else partial(self.core.write_online, batch),
        )
        self._handed = _Handed(
            records=records,
            stats=stats,
            refused=refused,
            codes=[exc.code for _, exc in parsed.rejected]
            + [code for _, code in label_dead_letters]
            + [REASON_LABEL_UNKNOWN_TRANSACTION] * len(refused),
            batch=batch,
            label_positions=computing.label_positions,
        )
        self._computing = None
        self.metrics.queue_depth.labels(stage="compute").set(0)
        self.metrics.queue_depth.labels(stage="delivery").set(1)

    def _settle(self) -> None:
        """Wait for the batch in the delivery stage: once committed, count it and commit the
        labels read for it; if it was not, keep it to be read again and raise."""
        handed, self._handed = self._handed, None
        if handed is None:
            return
        try:
            self.delivery.settle()
        except Exception:
            self._failed = handed
            raise
        finally:
            self.metrics.queue_depth.labels(stage="delivery").set(0)
        records = handed.records
        acked_ms = self.delivery.acknowledged_ms
        entered_ms = np.fromiter((r.timestamp for r in records), np.float64, len(records))
        self.metrics.end_to_end.observe_many(np.maximum(0.0, acked_ms - entered_ms) / 1000)
        for code in handed.codes:
            self.metrics.dead_letters.labels(reason=code).inc()
        self.metrics.events_in.inc(len(records))
        self.metrics.batch_size.observe(len(records))
        if handed.batch is not None:
            self.metrics.events_scored.inc(len(handed.batch))
            self.metrics.events_degraded.inc(int(handed.batch.degraded.sum()))
        self.stats.add(handed.stats)
        self._label_positions = handed.label_positions
        self.labels.maybe_commit(handed.label_positions)

    def _rewind(self) -> None:
        """Drop the batches not committed (the one in the delivery stage if it failed too, the
        one in the compute stage), with the labels read for them: they are read again from
        their committed positions (dead letters of malformed labels were in the dropped batch).
        Where the transactions are read again from is `_resume`'s to set, before the next read.
        """
        try:
            self._settle()
        except DeliveryStoppedError:
            raise
        except Exception as exc:  # kept in `_failed`: dropped below
            logger.warning("the batch before was not committed either: %r", exc)
        self._drop_computing()
        failed, self._failed = self._failed, None
        if failed is not None:
            self._refused_dead_letters = failed.refused + self._refused_dead_letters
        self._label_dead_letters.clear()
        self.labels.rewind()
        self.metrics.batches_rewound.inc()

    def _compute(self, parsed: ParsedBatch, records: list[ConsumerRecord]) -> ScoredBatch:
        """Features and scores of the batch's valid events."""
        degraded = np.zeros(len(parsed), bool)
        if self.settings.max_lag_s is not None:
            now_ms = time.time() * 1000
            ages = np.array([now_ms - record.timestamp for record in records]) / 1000
            degraded = ages > self.settings.max_lag_s
        return self.core.score(parsed.columns, degraded)

    def _score_records(self, batch: ScoredBatch, stats: WorkerStats) -> list[Outgoing]:
        """The batch's score and feature-log records."""
        columns = batch.transactions
        scored_at = format_timestamp(datetime.now(UTC))
        times = iso_times(columns["tx_datetime"])
        scores = score_bodies(batch, self.settings.score_threshold, scored_at, times)
        keys: list[bytes | None] = [b"%d" % tx_id for tx_id in columns["transaction_id"].tolist()]
        topic = self.settings.topic_scores
        outgoing: list[Outgoing] = [
            (topic, key, orjson.dumps(body)) for key, body in zip(keys, scores, strict=True)
        ]
        sample = self.settings.feature_log_sample_rate
        kept = np.arange(len(batch))
        if sample < 1.0:
            kept = kept[self._sampler.random(len(batch)) < sample]
        for start in range(0, len(kept), FEATURE_LOG_ROWS_PER_RECORD):
            rows = kept[start : start + FEATURE_LOG_ROWS_PER_RECORD]
            record = feature_log_record(batch, rows, scored_at, times)
            outgoing.append((self.settings.topic_feature_log, keys[rows[0]], record))
        stats.scored += len(batch)
        stats.versions.add(batch.model.version)
        self.metrics.feature_seconds.observe(batch.feature_seconds)
        self.metrics.model_seconds.observe(batch.model_seconds)
        self.metrics.model_version.labels(model=batch.model.name).set(float(batch.model.version))
        self.metrics.scores.observe_many(batch.scores)
        self._update_drift(batch)
        return outgoing

    def _update_drift(self, batch: ScoredBatch) -> None:
        """Rolling PSI of the served features against the serving model's training reference.

        Batches are gathered and the gauges refreshed at most every `DRIFT_REFRESH_S`, so that
        small batches (low load, low latency) do not each pay for it.
        """
        if batch.model.version != self._drift_version:
            self._load_drift_reference(batch.model.version)
        if self._drift is None:
            return
        self._drift_pending.append(np.column_stack([batch.features, batch.scores]))
        now = time.monotonic()
        if now - self._drift_refreshed < DRIFT_REFRESH_S:
            return
        self._drift_refreshed = now
        served = pd.DataFrame(
            np.concatenate(self._drift_pending), columns=[*batch.feature_names, "score"]
        )
        self._drift_pending.clear()
        self._drift.update(served)
        for name, value in self._drift.psi_by_feature().items():
            if np.isfinite(value):
                self.metrics.drift_psi.labels(feature=name).set(value)

    def _load_drift_reference(self, version: str) -> None:
        """The training reference of `version` for the drift gauges (None if it has none)."""
        self._drift_version = version
        self._drift_pending.clear()
        try:
            reference = reference_statistics(self.settings, version)
        except Exception as exc:  # drift gauges are optional; scoring goes on without them
            logger.warning("no reference statistics for the drift gauges: %s", exc)
            self._drift = None
            return
        self._drift = RollingDrift(reference, DRIFT_WINDOW_EVENTS)

    def _in_step(self, polled: dict[TopicPartition, list[ConsumerRecord]]) -> list[ConsumerRecord]:
        """The polled records, but for those of partitions read too far ahead of another in
        stream time: these are put back, read again later (`serving.alignment`)."""
        assigned = self.consumer.assignment()
        if len(assigned) < 2:
            return [record for batch in polled.values() for record in batch]
        waiting = {tp.partition: bool(polled.get(tp)) or self._has_records(tp) for tp in assigned}
        times = self.clock.stream_times
        hold = held_back(
            {tp.partition: times.get(tp.partition) for tp in assigned}, waiting, self._max_skew_us
        )
        kept: list[ConsumerRecord] = []
        for tp, batch in polled.items():
            if batch and tp.partition in hold:
                logger.debug("%s read ahead in event time: %d records put back", tp, len(batch))
                self.consumer.seek(tp, batch[0].offset)
            else:
                kept.extend(batch)
        return kept

    def _has_records(self, tp: TopicPartition) -> bool:
        """Whether `tp` has records left to read as of its last fetch (True if not known)."""
        end = self.consumer.highwater(tp)
        try:
            position = self.consumer.position(tp, timeout_ms=0)
        except KafkaError:  # not known without asking the broker: it has a fetch to come
            return True
        return end is None or position is None or position < end

    def _lag(self) -> int:
        """Records between the consumer's position and the end, over its partitions."""
        lag = 0
        for tp in self.consumer.assignment():
            end = self.consumer.highwater(tp)
            if end is not None:
                lag += max(0, end - self.consumer.position(tp))
        return lag

    def close(self) -> None:
        """Finish the batch in the compute stage, settle the one in the delivery stage, close
        the clients (an open transaction is aborted, if Kafka answers within 5 s)."""
        self.core.watcher.stop()
        try:
            try:
                self._finish_isolating()
                self._settle()
            except Exception as exc:  # read again by whoever reads its partitions next
                logger.warning("the last batches were not committed: %r", exc)
                self._drop_computing()
            self.labels.commit(self._label_positions)
        finally:
            self._compute_stage.shutdown(wait=True)
            try:
                self.delivery.close()
            finally:
                self.consumer.close(autocommit=False)
                self.labels.close()


def _next_offsets(records: list[ConsumerRecord]) -> dict[TopicPartition, OffsetAndMetadata]:
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, -1), record.offset)
    return {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in offsets.items()}


def build_worker(settings: Settings, metrics: ScoringMetrics | None = None) -> Worker:
    """The worker around a freshly built scoring core."""
    metrics = metrics or ScoringMetrics()
    core = build_core(settings)
    metrics.model_version.labels(model=core.model.name).set(float(core.model.version))
    return Worker(settings, core, metrics)


def freeze_start_up_objects() -> None:
    """Put every object built so far out of the garbage collector's sight, for good.

    For a worker process, once its worker is built: Feast, torch, ONNX Runtime and pandas
    objects (millions of them) live as long as the process, and a full collection walking
    them stalled a batch by ~200 ms mid-stream. Not for a process that builds workers and
    goes on to other things (tests): what is frozen is never freed.
    """
    gc.collect()
    gc.freeze()
