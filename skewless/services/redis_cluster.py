"""A local Redis Cluster: three primaries of Debian's `redis-server` on loopback.

`skewless services up` starts it instead of the single Redis when `SKEWLESS_REDIS_CLUSTER` is
true (nodes on `SKEWLESS_REDIS_PORT` and the two ports after it, cluster bus ports 10000
above, Redis's default); the tests start one on free ports. Each node is `redis-server
--cluster-enabled yes` with its node table (`nodes.conf`) and append-only file under
`<runtime>/redis-cluster/<port>/`, otherwise configured as the single Redis is. A fresh set of
nodes is joined by `redis-cli --cluster create ... --cluster-replicas 0 --cluster-yes` (16384
slots split in three); a set restarted from its folders finds its cluster again by itself.
Ready means `CLUSTER INFO` answers `cluster_state:ok` on every node.
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from skewless.services import redis_server
from skewless.services.process import (
    Endpoint,
    ManagedProcess,
    ServiceError,
    answers,
    wait_for,
    wait_ready,
)
from skewless.settings import Settings

logger = logging.getLogger(__name__)

NAME = "redis-cluster"
NODES = 3
BUS_PORT_OFFSET = 10_000
"""Redis's default distance between a node's client port and its cluster bus port."""
NODE_TIMEOUT_MS = 5_000
CREATE_TIMEOUT_S = 60.0


def default_ports(settings: Settings) -> tuple[list[int], list[int]]:
    """Client and bus ports of the nodes `services up` starts: the configured port and the two
    after it, each bus port 10000 above."""
    ports = [settings.redis_port + i for i in range(NODES)]
    return ports, [port + BUS_PORT_OFFSET for port in ports]


def node_process(settings: Settings, port: int) -> ManagedProcess:
    return ManagedProcess(f"{NAME}-{port}", settings.runtime_dir)


def _endpoint(settings: Settings, port: int) -> Endpoint:
    return Endpoint(
        f"{NAME} node", f"{settings.redis_host}:{port}", Settings.env_name("redis_port")
    )


def _node(settings: Settings, port: int) -> redis.Redis:
    """A one-attempt client of one node (the callers poll)."""
    password = settings.redis_password.get_secret_value() if settings.redis_password else None
    return redis.Redis(
        host=settings.redis_host,
        port=port,
        password=password,
        socket_timeout=redis_server.PROBE_TIMEOUT_S,
        socket_connect_timeout=redis_server.PROBE_TIMEOUT_S,
        retry=Retry(NoBackoff(), retries=0),
    )


def _pong(settings: Settings, port: int) -> bool:
    client = _node(settings, port)
    try:
        return bool(client.ping())
    finally:
        client.close()


def cluster_info(settings: Settings, port: int) -> dict[str, str]:
    """`CLUSTER INFO` of the node at `port`, as fields; raises if it does not answer."""
    client = _node(settings, port)
    try:
        text = client.execute_command("CLUSTER", "INFO")
    finally:
        client.close()
    if isinstance(text, bytes):
        text = text.decode()
    if isinstance(text, dict):  # (a client that parses it already)
        return {str(k): str(v) for k, v in text.items()}
    return dict(line.split(":", 1) for line in str(text).split("\r\n") if ":" in line)


def _state_ok(settings: Settings, port: int) -> bool:
    return cluster_info(settings, port).get("cluster_state") == "ok"


def is_ready(settings: Settings) -> bool:
    """True if every node of the cluster `services up` starts answers `cluster_state:ok`."""
    return nodes_ready(settings, default_ports(settings)[0])


def nodes_ready(settings: Settings, ports: Sequence[int]) -> bool:
    """True if every node answers `cluster_state:ok`."""
    return all(answers(partial(_state_ok, settings, port), NAME) for port in ports)


def start(
    settings: Settings, ports: Sequence[int] | None = None, bus_ports: Sequence[int] | None = None
) -> list[ManagedProcess]:
    """Start the nodes that are not running, join them if they are new, wait for state ok.

    Idempotent: running nodes are kept, a cluster already formed is not created again.
    """
    if ports is None or bus_ports is None:
        ports, bus_ports = default_ports(settings)
    if len(ports) != NODES or len(bus_ports) != NODES:
        raise ValueError(f"a local cluster has {NODES} nodes")
    processes = []
    for port, bus_port in zip(ports, bus_ports, strict=True):
        process = node_process(settings, port)
        if process.pid() is None:
            data_dir = settings.runtime_dir / NAME / str(port)
            argv = redis_server.server_argv(settings, port, data_dir)
            argv += [
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(data_dir / "nodes.conf"),
                "--cluster-port", str(bus_port),
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            ]  # fmt: skip
            process.start(argv)
        wait_ready(
            process,
            partial(_pong, settings, port),
            settings.service_start_timeout_s,
            _endpoint(settings, port),
        )
        processes.append(process)
    if cluster_info(settings, ports[0]).get("cluster_slots_assigned") == "0":
        _create(settings, ports)
    ready = wait_for(lambda: nodes_ready(settings, ports), settings.service_start_timeout_s, 0.2)
    if not ready:
        states = {port: _describe_state(settings, port) for port in ports}
        raise ServiceError(
            f"the Redis Cluster on ports {list(ports)} did not reach cluster_state:ok within "
            f"{settings.service_start_timeout_s:.0f} s ({states}); logs under "
            f"{settings.runtime_dir / 'logs'}"
        )
    logger.info("Redis Cluster ready on %s", ", ".join(str(p) for p in ports))
    return processes


def _describe_state(settings: Settings, port: int) -> str:
    try:
        return cluster_info(settings, port).get("cluster_state", "?")
    except redis.exceptions.RedisError as exc:
        return f"{type(exc).__name__}: {exc}"


def _create(settings: Settings, ports: Sequence[int]) -> None:
    """`redis-cli --cluster create` over the nodes: three primaries, no replicas."""
    cli = Path(redis_server.ensure_installed()).with_name("redis-cli")
    addresses = [f"{settings.redis_host}:{port}" for port in ports]
    env = dict(os.environ)
    if settings.redis_password:
        env["REDISCLI_AUTH"] = settings.redis_password.get_secret_value()
    argv = [str(cli), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
    result = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=CREATE_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        raise ServiceError(
            f"`{' '.join(argv)}` failed ({result.returncode}):\n{result.stdout[-2000:]}"
            f"{result.stderr[-2000:]}"
        )
    logger.info("Redis Cluster created over %s", ", ".join(addresses))


def running_nodes(settings: Settings) -> list[ManagedProcess]:
    """Every cluster node we started under the runtime folder (by its pid file)."""
    run = settings.runtime_dir / "run"
    names = sorted(path.stem for path in run.glob(f"{NAME}-*.pid"))
    return [ManagedProcess(name, settings.runtime_dir) for name in names]


def stop(settings: Settings) -> bool:
    """Stop every node we started; True if one was running."""
    stopped = [process.stop() for process in running_nodes(settings)]
    return any(stopped)
