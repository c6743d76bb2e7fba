"""What the worker writes for a micro-batch, and how it commits the batch's input offsets.

One idempotent `KafkaProducer` (`enable_idempotence=True`, `acks='all'`) carries the scores,
the dead letters and the feature log. Its records of one batch are sent by the delivery stage
(`LINGER_MS` gathers them into record batches of up to `BATCH_BYTES` per partition), in
send order per partition: the idempotent producer keeps that order through retries. Records
are at most the broker's 1 MiB (dead letters cut their original, feature-log records hold at
most a few hundred rows), so `send` never refuses one for its size.

`SKEWLESS_DELIVERY` chooses how a batch is committed:

- `at_least_once` (default): the stage flushes the producer, checks that Kafka acknowledged
  every record of the batch, then the consumer's offsets are committed. A crash before the commit
  re-reads the uncommitted batch, so a transaction can be scored twice; scores are keyed by
  `transaction_id` and consumers deduplicate by key.
- `exactly_once`: each batch is one Kafka transaction. The stage opens it, sends, flushes,
  adds the batch's next offsets to it with the consumer's group metadata of when the batch
  was read (`send_offsets_to_transaction`: a rebalance since then makes the broker refuse
  them, KIP-447, and the batch is read again)
  and commits it. A `read_committed` consumer of the output topics then sees each batch's
  records once, and only if its input offsets were committed with them. The transactional id
  is `<consumer_group>-<worker_id>` (`transactional_id`): one producer per worker process,
  whatever partitions the group gives it, stable across restarts, so that a restarted
  worker's `init_transactions` aborts the transaction its previous life left open instead of
  leaving `read_committed` readers blocked until the transaction times out. Two live
  workers with the same id fence each other: the fenced one stops with a message naming
  `SKEWLESS_WORKER_ID` (a configuration error, the one thing that stops a worker).
  The broker fences a producer in one more case: it aborts a transaction left open longer
  than `TRANSACTION_TIMEOUT_MS` (a Kafka outage that outlasted it, with the batch's
  records or commit waiting) and bumps the producer's epoch, and kafka-python 3.0.12 then
  reports `ProducerFencedError` too. The worker tells the two apart by the age of its
  open transaction: a transaction younger than the timeout cannot have timed out, so its
  fencing is a twin's; an older one's is waited out as a fault (`DeliveryError`), and the
  next producer's `init_transactions` takes the transactional id back. Should a twin fence
  it just then, the twin's own transaction is young, so the twin is the one that stops.

The delivery stage owns the producer: `hand_over` gives it a batch's records and offsets and
returns at once, and a thread of its own produces the records, waits for their
acknowledgements and commits, while the worker reads and computes the next batch (the guide's
pipelined inference; producing is a good part of a batch's Python time, and the worker's own
is mostly spent waiting for Redis). `settle` waits for that batch; the stage's queue holds one
batch, settled before the next is handed over. In exactly-once the stage commits the
transaction (the producer has one open at a time); in at-least-once `settle` commits the
offsets with `commit_async` (a failed asynchronous commit costs nothing but re-reading: the
next commit carries its offsets; `close` commits the last ones synchronously).

Either way, a batch that could not be delivered or committed (a broker fault outlasting the
producer's retries, a record the broker refused, a rebalance that took the batch's partitions,
an aborted transaction) raises `DeliveryError`. The worker then rewinds its consumer and
calls `abort`, so the batch is read and scored again (`Worker._resume`); the streaming
state is keyed by transaction id, so updating it twice changes nothing. `abort` aborts the
transaction (exactly-once; waiting at most `CLOSE_TIMEOUT_S`, see `_discard`), then replaces
the producer with a new one: after a record the broker refused, kafka-python 3.0.12's
idempotent producer fails every later record with the same error, and its transactional
producer is left in a state it cannot leave (`BUMPING_PRODUCER_EPOCH`). The new transactional
producer's `init_transactions` aborts
whatever the old one left open, or completes a commit the broker had begun: a commit can fail
in the worker and succeed in the broker (its answer lost to a broker killed in between), so in
exactly-once the worker reads on from the group's committed offsets, read once that
`init_transactions` returned, not from the batch's own. While Kafka is down, making or
initialising the new producer fails with `DeliveryError` and the worker tries again before it
reads anything. Only a fenced producer (another live worker has its transactional id) or one
that cannot initialise (not authorized) raises `DeliveryStoppedError`: the worker stops rather
than fence its twin in turn.

`producer.flush` of kafka-python 3.0.12 can raise `UnknownError('Future not done')` while a
batch it split (too large for the broker) is still in flight, so `commit` flushes again until
every record has an outcome (`FLUSH_ATTEMPTS`).

What is outside Kafka is not in the transaction: the Redis state (written by the worker) and
the Feast online rows (written by the stage, before it produces the batch's records, so a
reader that sees a score finds its online rows) are idempotent and written before the commit;
a failure to write them is a `DeliveryError` like any other. The label consumer's offsets are
committed on their own (reading labels again is harmless).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Literal

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import (
    AuthorizationError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    ProducerFencedError,
)
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import ConsumerGroupMetadata, OffsetAndMetadata

from skewless.settings import Settings

logger = logging.getLogger(__name__)

LINGER_MS = 5
"""How long the producer gathers a batch's records before sending them (`flush` sends at once)."""

BATCH_BYTES = 512 * 1024
"""Largest record batch per partition: a micro-batch's scores usually fit in one."""

TRANSACTION_TIMEOUT_MS = 60_000
"""A transaction left open this long (its worker gone for good) is aborted by the broker."""

REQUEST_TIMEOUT_MS = 20_000
"""How long the producer waits for the broker's answer to one request (kafka-python: 30 s)."""

DELIVERY_TIMEOUT_MS = 30_000
"""How long a record may wait for its acknowledgement before it counts as not delivered
(kafka-python: 120 s; at least `REQUEST_TIMEOUT_MS` + `LINGER_MS`). Kept short because
kafka-python 3.0.12 can drop a request to a coordinator: when the connection to a coordinator
it knows fails as the request is picked (its sender looks the coordinator up again and leaves
without queueing the request again). A transaction's AddPartitionsToTxn request dropped so
leaves the batch's records unsent until this timeout, also once the broker is back; the batch
then fails like any other (`DeliveryError`) and is read again and delivered by a new
producer. (While the broker is down, the records wait with it.)"""

COMMIT_TIMEOUT_S = 30.0
"""How long the worker waits for a batch's offsets and commit (`send_offsets_to_transaction`,
`commit_transaction`) before the batch counts as not committed. kafka-python's calls have no
timeout, and a request of theirs dropped as above would leave them waiting forever."""

FLUSH_ATTEMPTS = 5
"""`flush` calls before records still without an outcome count as not delivered."""

CLOSE_TIMEOUT_S = 5.0
"""How long a producer being replaced or closed may take to abort its transaction and to
finish what is in flight."""

DeliveryMode = Literal["at_least_once", "exactly_once"]
Offsets = dict[TopicPartition, OffsetAndMetadata]
Outgoing = tuple[str, bytes | None, bytes]
"""A record to produce: topic, key, value."""


class DeliveryError(RuntimeError):
    """The batch was not committed: abort, rewind the consumer, read the batch again."""


class DeliveryStoppedError(RuntimeError):
    """The producer cannot go on (fenced, not authorized): the worker must stop."""


def transactional_id(settings: Settings) -> str:
    """`<consumer_group>-<worker_id>`; the worker id defaults to the host name."""
    return f"{settings.consumer_group}-{settings.worker_id or socket.gethostname()}"


class Delivery:
    """The worker's producer and offset commits, in the configured mode (see the module doc)."""

    def __init__(self, settings: Settings, consumer: KafkaConsumer, client_id: str) -> None:
        self.mode: DeliveryMode = settings.delivery
        self.consumer = consumer
        self.group_id = settings.consumer_group
        self.transactional_id = transactional_id(settings) if self.mode == "exactly_once" else None
        self.transaction_timeout_ms = TRANSACTION_TIMEOUT_MS
        self._config = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "client_id": client_id,
            "acks": "all",
            "enable_idempotence": True,
            "transactional_id": self.transactional_id,
            "transaction_timeout_ms": self.transaction_timeout_ms,
            "request_timeout_ms": REQUEST_TIMEOUT_MS,
            "delivery_timeout_ms": DELIVERY_TIMEOUT_MS,
            "linger_ms": LINGER_MS,
            "batch_size": BATCH_BYTES,
        }
        self._producer: KafkaProducer | None = None
        self._initialised = False
        self._used = False
        """Whether the producer was given a batch (else `abort` keeps it)."""
        self._stop: DeliveryStoppedError | None = None
        """Why the producer cannot go on (fenced, not authorized), once it is known."""
        self._in_transaction = False
        self._began = 0.0
        """When the open transaction began (`_clock`)."""
        self._stage = ThreadPoolExecutor(max_workers=1, thread_name_prefix="skewless-delivery")
        self._handed: Future[tuple[Offsets, float]] | None = None
        self.acknowledged_ms = 0.0
        """When Kafka had acknowledged the last settled batch's records (ms since the epoch)."""
        self._committed: Offsets = {}
        """Offsets of the batches settled (at-least-once): what `close` commits for sure."""
        # Before the consumer reads its committed offsets: a transaction this worker's previous
        # life left open is aborted (or its commit completed) here.
        self.ready()

    @property
    def exactly_once(self) -> bool:
        return self.transactional_id is not None

    def ready(self) -> KafkaProducer:
        """The producer, made anew if `abort` dropped the last one, and in exactly-once
        initialised: its `init_transactions` aborts the transaction the one before left open,
        or completes the commit it had begun, so that the group's committed offsets are final
        once it returns.

        While Kafka is down this raises `DeliveryError` (a fault to wait out) after the
        client's own timeouts (bootstrap 30 s, `init_transactions` 60 s); calling again (or
        `abort`) makes a new producer. A producer whose `init_transactions` timed out is not
        waited on again: its request may have been dropped (see `DELIVERY_TIMEOUT_MS`), and
        its `init_transactions` would then wait on it forever. Fenced or not authorized:
        `DeliveryStoppedError`, for good."""
        if self._stop is not None:
            raise self._stop
        if self._producer is None:
            try:
                self._producer = KafkaProducer(**self._config)
            except KafkaError as exc:
                raise DeliveryError(f"no producer could be made: {exc!r}") from exc
            self._initialised = not self.exactly_once
            self._used = False
        if not self._initialised:
            try:
                self._producer.init_transactions()
            except KafkaTimeoutError as exc:
                self._discard()
                raise DeliveryError(
                    f"transactional producer {self.transactional_id!r} not initialised yet: {exc!r}"
                ) from exc
            except KafkaError as exc:
                failure = self._transactional_failure(exc)
                if isinstance(failure, DeliveryError):  # (its client gave up: a new one tries)
                    self._discard()
                raise failure from exc
            self._initialised = True
        return self._producer

    def settled(self, tp: TopicPartition) -> int | None:
        """At-least-once: the offset after the last batch of `tp` delivered and settled by this
        worker (its commit may still be on its way); exactly-once: None (the group's committed
        offset says it)."""
        offset = self._committed.get(tp)
        return None if offset is None else offset.offset

    def deliver(
        self, outgoing: list[Outgoing], offsets: Offsets, membership: ConsumerGroupMetadata
    ) -> None:
        """Produce `outgoing` and commit `offsets` with it, waiting for both (`hand_over`)."""
        self.hand_over(outgoing, offsets, membership)
        self.settle(asynchronous=False)

    @property
    def handed(self) -> bool:
        """Whether a batch is in the delivery stage, not settled yet."""
        return self._handed is not None

    def hand_over(
        self,
        outgoing: list[Outgoing],
        offsets: Offsets,
        membership: ConsumerGroupMetadata,
        before: Callable[[], None] | None = None,
    ) -> None:
        """Give a batch to the delivery stage and return at once: the stage runs `before`
        (the batch's writes outside Kafka that readers of its records may count on: the
        Feast online rows), produces its `outgoing` records (in a transaction in
        exactly-once) and commits `offsets`, its next ones. `settle` it before handing over
        the next batch.

        `membership` is the consumer's group metadata when the batch's records were read.
        Exactly-once commits the offsets with it: after a rebalance since then, the batch's
        partitions may be read again from their committed offsets (by this worker or by
        another), so the broker refuses the offsets (KIP-447) and the batch is read again
        instead of being scored twice. The metadata of the moment of the commit would pass."""
        if self._handed is not None:
            raise RuntimeError("a batch is already in the delivery stage: settle it first")
        metadata = membership if self.exactly_once else None
        self._handed = self._stage.submit(self._deliver, outgoing, offsets, metadata, before)

    def settle(self, asynchronous: bool = True) -> None:
        """Wait for the batch in the delivery stage (if any): committed, or `DeliveryError`
        (`DeliveryStoppedError`) raised here. At-least-once commits its offsets now, with
        `commit_async` unless `asynchronous` is false."""
        handed, self._handed = self._handed, None
        if handed is None:
            return
        try:
            offsets, self.acknowledged_ms = handed.result()
        except (DeliveryError, DeliveryStoppedError, KafkaError):
            raise
        except Exception as exc:  # (not expected) the batch is read again, never skipped
            raise DeliveryError(f"the delivery stage failed: {exc!r}") from exc
        if self.exactly_once:
            return
        self._committed.update(offsets)
        if asynchronous:
            self.consumer.commit_async(offsets, callback=_log_failed_commit)
            return
        try:
            self.consumer.commit(offsets)
        except KafkaError as exc:
            raise DeliveryError(f"the batch's offsets were not committed: {exc!r}") from exc

    def _deliver(
        self,
        outgoing: list[Outgoing],
        offsets: Offsets,
        metadata: object,
        before: Callable[[], None] | None,
    ) -> tuple[Offsets, float]:
        """The delivery stage's work for one batch (its own thread); its offsets, and when its
        records were acknowledged."""
        if before is not None:
            try:
                before()
            except Exception as exc:  # (a Redis fault: the worker meets it again, reading)
                raise DeliveryError(
                    f"the batch's writes before its records failed: {exc!r}"
                ) from exc
        producer = self.ready()
        self._used = True
        if self.exactly_once and not self._in_transaction:
            try:
                producer.begin_transaction()
            except KafkaError as exc:  # (its client in an error state since the last batch)
                raise self._transactional_failure(exc) from exc
            self._in_transaction = True
            self._began = _clock()
        pending = []
        for topic, key, value in outgoing:
            try:
                pending.append(producer.send(topic, value, key=key))
            except MessageSizeTooLargeError:
                raise  # a bug: every record the worker makes fits the broker's limit
            except KafkaError as exc:
                if _fenced(exc):
                    raise self._fence_failure(exc) from exc
                raise DeliveryError(f"{topic}: a record could not be queued: {exc!r}") from exc
        self._await_acknowledgements(producer, pending)
        acknowledged_ms = time.time() * 1000
        if not self.exactly_once:
            return offsets, acknowledged_ms
        try:
            _bounded(
                lambda: _commit(producer, offsets, metadata),
                COMMIT_TIMEOUT_S,
                "the batch's offsets and commit",
            )
            self._in_transaction = False
        except KafkaError as exc:
            if _fenced(exc):
                raise self._fence_failure(exc) from exc
            raise DeliveryError(f"the batch's offsets were not committed: {exc!r}") from exc
        return offsets, acknowledged_ms

    def abort(self) -> None:
        """Drop the current batch after `DeliveryError`: abort its transaction (exactly-once,
        `_discard`), and go on with a new producer (see the module doc), made by `ready`, whose
        errors this raises; its `init_transactions` aborts what the old one could not. A batch
        still in the delivery stage is waited for and dropped too (the caller settles it first
        if it wants to know whether it was committed).

        A failed commit may have been committed all the same (the broker wrote it, its answer
        was lost): in exactly-once only the group's committed offsets, read after `ready`, say
        where to read on."""
        self._drop_handed()
        if self._used or self._in_transaction:  # (else: `ready` was stopped by a fault)
            self._discard()
        self.ready()

    def _discard(self) -> None:
        """Abort the open transaction (if any), waiting at most `CLOSE_TIMEOUT_S`, and close
        the producer; no new one is made. kafka-python's `abort_transaction` has no timeout,
        and waits forever when its request was dropped (see `DELIVERY_TIMEOUT_MS`), also once
        the broker is back: the worker goes on without it, and the transaction is aborted by
        the next producer's `init_transactions`, or by the broker after
        `TRANSACTION_TIMEOUT_MS` if no producer of this transactional id comes back. A failed
        abort is not judged here (a fencing was judged where it was first seen)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            if self._in_transaction:
                try:
                    _bounded(producer.abort_transaction, CLOSE_TIMEOUT_S, "the abort")
                except (DeliveryError, KafkaError) as exc:
                    logger.warning("transaction of %r not aborted (%r); the next producer of "
                                   "this id aborts it", self.transactional_id, exc)  # fmt: skip
            self._close(producer)
        self._in_transaction = False

    def close(self) -> None:
        """Abort an open transaction (`_discard`), deliver what is queued, close the producer.

        A producer that already failed for good is closed without a second error.
        """
        try:
            self.settle(asynchronous=False)
        except Exception as exc:  # (whatever it was, closing goes on)
            logger.warning("the last batch was not committed: %s", exc)
        try:
            if self._in_transaction:
                self._discard()
            elif not self.exactly_once:  # (the last asynchronous commit may still be on its way)
                owned = self.consumer.assignment()
                last = {tp: offset for tp, offset in self._committed.items() if tp in owned}
                if last:
                    self.consumer.commit(last)
        except KafkaError as exc:  # read again by whoever reads the partitions next
            logger.warning("the last offsets were not committed: %r", exc)
        finally:
            self._stage.shutdown(wait=True)
            if self._producer is not None:
                self._close(self._producer)

    def _drop_handed(self) -> None:
        handed, self._handed = self._handed, None
        if handed is not None:
            try:
                handed.result()
            except Exception as exc:  # (dropped either way)
                logger.debug("batch dropped from the delivery stage: %r", exc)

    @staticmethod
    def _close(producer: KafkaProducer) -> None:
        try:
            producer.close(timeout=CLOSE_TIMEOUT_S)
        except KafkaError as exc:  # its records were given up on by the caller
            # (kafka-python's `close` flushes first: records still waiting make it stop there,
            # and the producer's thread runs on until they expire)
            logger.warning("producer not closed, records still waiting: %r", exc)

    def _await_acknowledgements(
        self, producer: KafkaProducer, pending: list[FutureRecordMetadata]
    ) -> None:
        for attempt in range(1, FLUSH_ATTEMPTS + 1):
            try:
                producer.flush()
                break
            except KafkaError as exc:
                logger.warning("flush %d/%d: %r", attempt, FLUSH_ATTEMPTS, exc)
        failed = [future for future in pending if not future.succeeded()]
        if failed:
            first = failed[0].exception
            if first is not None and _fenced(first):
                raise self._fence_failure(first)
            raise DeliveryError(f"{len(failed)} records not acknowledged, first: {first!r}")

    def _transactional_failure(self, exc: KafkaError) -> DeliveryError | DeliveryStoppedError:
        """What a failed transactional step means. Fenced or not authorized, no wait cures it:
        `DeliveryStoppedError`, and no other producer is made (`ready` raises it from now on).
        Anything else (kafka-python makes a request that timed out a fatal error of its
        client, too) is a fault: `DeliveryError`, and a new producer tries again."""
        if _fenced(exc):
            return self._fenced(exc)
        if isinstance(exc, AuthorizationError):
            self._stop = DeliveryStoppedError(
                f"transactional producer {self.transactional_id!r} is not authorized: {exc!r}"
            )
            return self._stop
        return DeliveryError(f"transactional producer {self.transactional_id!r}: {exc!r}")

    def _fence_failure(self, exc: Exception) -> DeliveryError | DeliveryStoppedError:
        """What a fencing in the middle of a transaction means (see the module doc). Open
        longer than its timeout, the broker may have aborted it and bumped the epoch: a fault,
        and the next producer takes the transactional id back. Younger, only another
        producer's `init_transactions` can have fenced it: a twin, and the worker stops."""
        open_s = _clock() - self._began
        timeout_ms = self.transaction_timeout_ms
        if self._in_transaction and open_s * 1000 >= timeout_ms:
            logger.warning(
                "transaction of %r open %.0f s, longer than its timeout (%d ms): fenced by the "
                "broker's abort, most likely; a new producer takes the transactional id back",
                self.transactional_id, open_s, timeout_ms,
            )  # fmt: skip
            return DeliveryError(f"the transaction timed out after {open_s:.0f} s: {exc!r}")
        return self._fenced(exc)

    def _fenced(self, exc: Exception) -> DeliveryStoppedError:
        """Another worker has this transactional id: a new producer would fence it in turn,
        so none is made (`ready` raises this from now on)."""
        self._stop = DeliveryStoppedError(
            f"another worker took transactional id {self.transactional_id!r}: give each worker "
            f"of consumer group {self.group_id!r} its own SKEWLESS_WORKER_ID ({exc!r})"
        )
        return self._stop


def _log_failed_commit(offsets: Offsets, response: object) -> None:
    if isinstance(response, Exception):
        logger.warning("offsets not committed this time (the next commit carries them): %r",
                       response)  # fmt: skip


def _fenced(exc: BaseException) -> bool:
    """Whether `exc` says another producer took this transactional id. kafka-python reports a
    fencing as `ProducerFencedError`, or, once its producer is in that error state, as a plain
    `KafkaError` naming it."""
    return isinstance(exc, ProducerFencedError) or "ProducerFencedError" in str(exc)


def _clock() -> float:
    """Seconds on a clock that goes on while the host is suspended (Linux `CLOCK_BOOTTIME`),
    as the broker's does: a transaction that timed out on the broker is never taken for a
    young one because the host slept."""
    if hasattr(time, "CLOCK_BOOTTIME"):
        return time.clock_gettime(time.CLOCK_BOOTTIME)
    return time.monotonic()


def _commit(producer: KafkaProducer, offsets: Offsets, metadata: object) -> None:
    producer.send_offsets_to_transaction(offsets, metadata)
    producer.commit_transaction()


def _bounded(call: Callable[[], object], timeout_s: float, what: str) -> None:
    """Run `call` (a kafka-python call without a timeout of its own) and wait for it at most
    `timeout_s`: its exception is raised here, and `DeliveryError` if it has not returned by
    then. It runs on a daemon thread, left waiting if it never returns (kafka-python dropped
    its request), so that it cannot hold the worker or its exit."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # (raised in the caller's thread)
            failure.append(exc)

    thread = threading.Thread(target=run, name="skewless-kafka-call", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise DeliveryError(f"{what}: no answer from Kafka in {timeout_s:.0f} s")
    if failure:
        raise failure[0]
