"""Many Redis commands in one round trip, with as little Python per command as possible.

redis-py's pipeline builds a command object, packs and parses each reply in Python (about
20 us a command); for the thousands of commands of a scoring micro-batch that is most of the
batch. Here the commands are packed by hiredis (C), written in one `sendall` on a pooled
connection, and the replies read back in order. Every reply is read, error replies included,
so the connection goes back to the pool in step; then the first error reply raises. A broken
connection raises after the connection is dropped, so no half-read replies go back to the pool.

**Redis Cluster** (`redis.RedisCluster`, `SKEWLESS_REDIS_CLUSTER=true`): the commands are
grouped by the primary that owns their key's slot (the first key of an `FCALL`, else the first
argument), using redis-py's slot map. Each node's commands are written to it first, all nodes
in turn, and only then are the replies read, node by node: the nodes work at the same time, so
a batch costs one round trip whatever the number of nodes, one write per node. Replies come
back in the order of the commands. The commands answered with a redirection (`MOVED`, `ASK`)
or `TRYAGAIN`/`CLUSTERDOWN` (slots moving, a failover) are sent again, those alone: after
`MOVED` or `CLUSTERDOWN` once the slot map was read again from the cluster, after `ASK` to the
node it names, preceded by `ASKING`; at most `REDIRECT_ATTEMPTS` times, with a short backoff,
then the reply raises. The commands of one key share one node and so one fate, in order;
commands must be idempotent (the platform's are: a batch may also be sent again whole).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import hiredis
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

logger = logging.getLogger(__name__)

Command = tuple[bytes, ...]
Client = redis.Redis | RedisCluster
"""A single Redis or a Redis Cluster: everything here works with either."""

CHUNK_COMMANDS = 10_000
CHUNK_BYTES = 2 * 1024 * 1024
"""Commands (or bytes of them) written before their replies are read: bounds the memory of
very large loads, and the time one write waits for Redis to take it in (a socket timeout
covers a whole write)."""
REDIRECT_ATTEMPTS = 5
"""Times a command redirected or refused by a cluster in flux is sent again."""
REDIRECT_BACKOFF_S = 0.05
"""First wait before sending redirected commands again (doubling each time)."""

_KEYS_AFTER_NUMKEYS = frozenset({b"FCALL", b"FCALL_RO", b"EVAL", b"EVALSHA"})
_ASKING = hiredis.pack_command((b"ASKING",))
_AGAIN = (redis.exceptions.MovedError, redis.exceptions.AskError,
          redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)  # fmt: skip
"""Replies of a cluster in flux: the command is sent again (`MovedError` is an `AskError`)."""


def _chunks(commands: Sequence[Command]) -> Iterator[Sequence[Command]]:
    """`commands` in runs of at most `CHUNK_COMMANDS` commands and about `CHUNK_BYTES`."""
    start = size = 0
    for end, command in enumerate(commands):
        size += sum(map(len, command))
        if end + 1 - start >= CHUNK_COMMANDS or size >= CHUNK_BYTES:
            yield commands[start : end + 1]
            start, size = end + 1, 0
    if start < len(commands):
        yield commands[start:]


def execute(client: Client, commands: Sequence[Command]) -> list[Any]:
    """Run `commands` (each a tuple of bytes arguments); their replies, in order."""
    replies: list[Any] = []
    for chunk in _chunks(commands):
        if isinstance(client, RedisCluster):
            replies += _execute_on_cluster(client, chunk)
        else:
            [(chunk_replies, errors)] = _send_and_read([(client, chunk, None)])
            if errors:
                raise chunk_replies[errors[0]]
            replies += chunk_replies
    return replies


def glob_escaped(text: bytes) -> bytes:
    """`text` as a literal in a `SCAN MATCH` pattern."""
    return re.sub(rb"([*?\[\]\\])", rb"\\\1", text)


def _wanted(key: bytes, unless_under: bytes | None, shape: re.Pattern[bytes] | None) -> bool:
    return (unless_under is None or not key.startswith(unless_under)) and (
        shape is None or shape.fullmatch(key) is not None
    )


def remove_keys(
    client: Client,
    pattern: bytes,
    unless_under: bytes | None = None,
    shape: re.Pattern[bytes] | None = None,
) -> int:
    """Unlink every key matching the `SCAN MATCH` `pattern` (on every primary of a cluster)
    that does not start with `unless_under` and, with `shape`, whose whole name has it;
    returns how many. `SCAN` finds them, so Redis keeps serving meanwhile."""
    found = client.scan_iter(match=pattern, count=1_000)
    keys = [key for key in found if _wanted(key, unless_under, shape)]
    execute(client, [(b"UNLINK", key) for key in keys])
    return len(keys)


def remove_keys_under(client: Client, head: bytes) -> int:
    """Unlink every key that starts with `head`; returns how many (`remove_keys`)."""
    return remove_keys(client, glob_escaped(head) + b"*")


def first_key(
    client: Client,
    pattern: bytes,
    budget_s: float,
    unless_under: bytes | None = None,
    shape: re.Pattern[bytes] | None = None,
) -> tuple[bytes | None, bool]:
    """A key matching the `SCAN MATCH` `pattern` (on any primary of a cluster) that does not
    start with `unless_under` and, with `shape`, whose whole name has it; or None; and whether
    that answer is sure. To tell there is none, `SCAN` walks every key: it stops after
    `budget_s`, and then the answer is None and not sure."""
    deadline = time.monotonic() + budget_s
    nodes: list[redis.Redis] = (
        [client.get_redis_connection(node) for node in client.get_primaries()]
        if isinstance(client, RedisCluster)
        else [client]
    )
    for node in nodes:
        cursor = 0
        while True:
            reply = node.scan(cursor, match=pattern, count=1_000)
            cursor, keys = cast(tuple[int, list[bytes]], reply)
            for key in keys:
                if _wanted(key, unless_under, shape):
                    return key, True
            if cursor == 0:
                break
            if time.monotonic() > deadline:
                return None, False
    return None, True


class FunctionLibrary:
    """A Redis Function library (a Lua file starting `#!lua name=...`), loaded before its first
    use and again when Redis lost it (a Redis restarted empty): on every primary of a cluster,
    as redis-py sends `FUNCTION LOAD` to all of them. `FUNCTION LOAD REPLACE` replaces an
    older copy of the same library."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.loaded = False

    def load(self, client: Client) -> None:
        client.function_load(self.path.read_text(), replace=True)
        self.loaded = True

    def execute(self, client: Client, commands: Sequence[Command]) -> list[Any]:
        """`execute` the commands, loading the library first when it is not (or no more)."""
        if not self.loaded:
            self.load(client)
        try:
            return execute(client, commands)
        except redis.ResponseError as error:
            if "function not found" not in str(error).lower():
                raise
            logger.warning(
                "the Redis Function library %s was missing: loading it again", self.path.name
            )
            self.load(client)
            return execute(client, commands)


def command_key(command: Command) -> bytes:
    """The key that routes `command` in a cluster: an FCALL's (or EVAL's) first key, else the
    first argument."""
    return command[3] if command[0].upper() in _KEYS_AFTER_NUMKEYS else command[1]


def _send_and_read(
    batches: Sequence[tuple[redis.Redis, Sequence[Command], ClusterNode | None]],
) -> list[tuple[list[Any], list[int]]]:
    """Write each batch on a connection of its client, all of them; then read each batch's
    replies (error replies as exception values) and where its errors are. With a node, each
    command is preceded by `ASKING` (its reply dropped)."""
    pack = hiredis.pack_command
    taken: list[tuple[redis.ConnectionPool, Any]] = []
    try:
        for client, commands, asking in batches:
            pool = client.connection_pool
            connection = pool.get_connection()
            taken.append((pool, connection))
            if asking is None:
                packed = b"".join([pack(cast(Any, command)) for command in commands])
            else:
                packed = b"".join([_ASKING + pack(cast(Any, command)) for command in commands])
            connection.send_packed_command([packed])
        results = []
        for (_, connection), (_, commands, asking) in zip(taken, batches, strict=True):
            results.append(_read(connection, len(commands), asking is not None))
    except BaseException:
        for _, connection in taken:
            connection.disconnect()
        raise
    finally:
        for pool, connection in taken:
            pool.release(connection)
    return results


def _read(connection: Any, count: int, asking: bool) -> tuple[list[Any], list[int]]:
    """`count` replies, an error reply as its exception value (each `ASKING` reply dropped),
    and the positions of the error replies."""
    read = connection.read_response
    replies: list[Any] = []
    errors: list[int] = []
    append = replies.append
    while len(replies) < count:
        try:  # (one try around the loop: the common case, no error, costs nothing more)
            for _ in range(count - len(replies)):
                if asking:
                    read(disable_decoding=True)
                append(read(disable_decoding=True))
        except redis.exceptions.ResponseError as error:
            errors.append(len(replies))
            append(error)
    return replies, errors


def _execute_on_cluster(cluster: RedisCluster, commands: Sequence[Command]) -> list[Any]:
    """Commands grouped per primary, one write each, replies in order; redirections retried."""
    replies: list[Any] = [None] * len(commands)
    failed: dict[int, redis.exceptions.ResponseError] = {}
    pending = list(range(len(commands)))
    asked: dict[int, ClusterNode] = {}
    for attempt in range(REDIRECT_ATTEMPTS + 1):
        groups: dict[tuple[str, bool], tuple[ClusterNode, list[int]]] = {}
        slots = cluster.nodes_manager.slots_cache
        for index in pending:
            node = asked.get(index)
            if node is None:
                owners = slots.get(key_slot(command_key(commands[index])))
                if not owners:  # a slot no node serves (the map is being read again)
                    owners = [cluster.get_node_from_key(command_key(commands[index]))]
                node = owners[0]
            key = (node.name, index in asked)
            groups.setdefault(key, (node, []))[1].append(index)
        batches = [
            (
                cluster.get_redis_connection(node),
                [commands[i] for i in indexes],
                node if asking else None,
            )
            for (_, asking), (node, indexes) in groups.items()
        ]
        try:
            results = _send_and_read(batches)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            _refresh(cluster)  # a node gone: the next batch finds its successor
            raise
        pending, asked, refresh = [], {}, False
        for (_, indexes), (result, errors) in zip(groups.values(), results, strict=True):
            for index, reply in zip(indexes, result, strict=True):
                replies[index] = reply
                failed.pop(index, None)
            for position in errors:
                index, reply = indexes[position], result[position]
                failed[index] = reply
                if isinstance(reply, _AGAIN):
                    pending.append(index)
                    if type(reply) is redis.exceptions.AskError:
                        asked[index] = _node_at(cluster, reply.host, reply.port)
                    elif isinstance(
                        reply, redis.exceptions.MovedError | redis.exceptions.ClusterDownError
                    ):
                        refresh = True
        if not pending or attempt == REDIRECT_ATTEMPTS:
            break
        pending.sort()
        time.sleep(REDIRECT_BACKOFF_S * 2**attempt)
        if refresh:
            _refresh(cluster)
    if failed:
        raise failed[min(failed)]
    return replies


def _node_at(cluster: RedisCluster, host: str, port: int) -> ClusterNode:
    """The cluster's node at host:port (added to redis-py's map if it is new)."""
    node = cluster.get_node(host=host, port=port)
    if node is None:
        node = ClusterNode(host, port)
        cluster.nodes_manager.nodes_cache[node.name] = node
    return node


def _refresh(cluster: RedisCluster) -> None:
    """Read the slot map again; a cluster that cannot answer now is left for the next call."""
    try:
        cluster.nodes_manager.initialize()
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as error:
        logger.warning("could not read the cluster's slot map again: %r", error)
