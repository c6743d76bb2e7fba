"""Which Redis errors the worker waits out: a single Redis's and a Redis Cluster's in flux."""

from __future__ import annotations

import pytest
from redis import exceptions

from serving.worker import fault_dependency


@pytest.mark.parametrize(
    "error",
    [
        exceptions.ConnectionError("Connection refused"),
        exceptions.TimeoutError("Timeout reading"),
        exceptions.ClusterDownError("The cluster is down"),
        exceptions.MasterDownError("Link with MASTER is down"),
        exceptions.MovedError("3999 127.0.0.1:7001"),
        exceptions.AskError("3999 127.0.0.1:7002"),
        exceptions.TryAgainError("Multiple keys request during rehashing of slot"),
        exceptions.SlotNotCoveredError('Slot "12" not covered by the cluster'),
        exceptions.ResponseError("ERR Function not found"),
    ],
)
def test_faults_of_redis_and_of_a_cluster_in_flux_are_waited_out(error: Exception) -> None:
    assert fault_dependency(error) == "redis"


def test_a_wrong_type_reply_is_not_a_fault() -> None:
    error = exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")
    assert fault_dependency(error) is None
