"""What every service emulator's HTTP front needs: a server that can go down the way a real one does."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from http.server import ThreadingHTTPServer


class CuttableServer(ThreadingHTTPServer):
    """Keeps its connections, so that going down cuts the kept-alive ones too (a client sees a reset, not a
    server that still answers on an old connection)."""

    daemon_threads = True

    def __init__(self, *args, **kw):
        self.connections: set[socket.socket] = set()
        super().__init__(*args, **kw)

    def process_request(self, request, client_address):
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        for connection in list(self.connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            connection.close()


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL a job's whole process group (jobs start in a session of their own) and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
