"""The systemd notify protocol (sd_notify): READY, STATUS, WATCHDOG, STOPPING, RELOADING.

A datagram to the unix socket named by ``NOTIFY_SOCKET``; a no-op when syncd
does not run under systemd. Written out because it is a few lines and the
library bindings need libsystemd at build time.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None):
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        wanted = usec is not None and usec.isdigit() and (not pid or pid == str(os.getpid()))
        #: seconds between watchdog pings systemd expects (None: no watchdog)
        self.watchdog_interval = int(usec) / 1_000_000 if usec is not None and wanted else None

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(lines).encode())
            return True
        except OSError:
            return False  # systemd gone or socket unusable: never a reason to stop working

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1", "STATUS=stopping")

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading config")
