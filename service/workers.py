"""The parent process of `WEB_CONCURRENCY` > 1 workers: uvicorn's supervisor, stopping new connections at SIGTERM."""

from __future__ import annotations

import contextlib
import os
import signal
import socket

from uvicorn.config import Config
from uvicorn.supervisors import Multiprocess


class Workers(Multiprocess):
    """uvicorn's own supervisor looks at signals every 0.5 s and keeps its copy of the listening socket
    open until every worker has finished, so after SIGTERM the kernel goes on accepting connections that
    no one will answer (they are reset when the parent exits), and a worker not yet told may serve one.
    Here SIGTERM closes the parent's copy and passes the signal on at once; each worker closes its own as
    it begins its graceful stop, and from then on connections are refused, as with one process.
    """

    def __init__(self, config: Config, sockets: list[socket.socket]) -> None:
        super().__init__(config, sockets)
        self.stopping = False
        signal.signal(signal.SIGTERM, self.stop_accepting)

    def stop_accepting(self, signum: int, frame: object) -> None:
        self.stopping = True
        for sock in self.sockets:
            sock.close()
        for process in self.processes:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        self.signal_queue.append(signum)  # uvicorn's loop then waits for the workers as usual

    def keep_subprocess_alive(self) -> None:
        if not self.stopping:  # a worker ending now is stopping, not dying: no replacement
            super().keep_subprocess_alive()
