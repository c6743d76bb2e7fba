"""A Starlette application served by uvicorn on a loopback socket, from a thread or in front.

Both scoring processes serve HTTP this way: the enricher (`serving.http`) and the worker's
`/metrics` and `/health` (`serving.metrics`). The socket is bound before uvicorn starts, so
`port=0` takes a free port and `port` tells which; uvicorn's own records go through the
platform's logging (the log file), and access logs are off.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Self

import uvicorn
from starlette.applications import Starlette


class AppServer:
    """uvicorn serving `app` on host:port (0: any free port)."""

    def __init__(
        self,
        app: Starlette,
        host: str,
        port: int,
        *,
        max_concurrency: int | None = None,
        backlog: int = 2048,
    ) -> None:
        self.socket = socket.create_server((host, port), backlog=backlog)
        self.port: int = self.socket.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            limit_concurrency=max_concurrency,
            backlog=backlog,
            timeout_keep_alive=5,
            lifespan="off",
        )
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM (uvicorn's handlers, in the main thread) or `stop`."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout_s: float = 30.0) -> Self:
        """Serve from a background thread; returns once the server accepts requests.

        `stop` it before the process exits: its event loop (uvloop) fires timers from native
        code, and one that fires once the interpreter has finalized crashes the process.
        """
        self._thread = threading.Thread(target=self.run, name=f"http-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Finish the requests in flight, close the socket, join the thread."""
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.socket.close()
