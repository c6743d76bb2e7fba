"""Many Redis commands in one round trip, with as little Python per command as possible.

redis-py's pipeline builds a command object, packs and parses each reply in Python (about
20 us a command); for the thousands of commands of a scoring micro-batch that is most of the
batch. Here the commands are packed by hiredis (C), written in one `sendall` on a pooled
connection, and the replies read back in order. An error reply or a broken connection raises
after the connection is dropped, so no half-read replies go back to the pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis

Command = tuple[bytes, ...]

CHUNK_COMMANDS = 10_000
CHUNK_BYTES = 2 * 1024 * 1024
"""Commands (or bytes of them) written before their replies are read: bounds the memory of
very large loads, and the time one write waits for Redis to take it in (a socket timeout
covers a whole write)."""


def execute(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    """Run `commands` (each a tuple of bytes arguments) in order; their replies, in order."""
    replies: list[Any] = []
    start = size = 0
    for end, command in enumerate(commands):
        size += sum(len(argument) for argument in command)
        if end + 1 - start >= CHUNK_COMMANDS or size >= CHUNK_BYTES:
            replies += _execute_chunk(client, commands[start : end + 1])
            start, size = end + 1, 0
    if start < len(commands):
        replies += _execute_chunk(client, commands[start:])
    return replies


def _execute_chunk(client: redis.Redis, commands: Sequence[Command]) -> list[Any]:
    pack = hiredis.pack_command
    packed = b"".join([pack(cast(Any, command)) for command in commands])
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([packed])
        replies = [connection.read_response(disable_decoding=True) for _ in commands]
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    return replies
