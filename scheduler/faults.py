"""Fault injection helpers for chaos runs and tests (loopback only)."""

from __future__ import annotations

import contextlib
import socket
import threading

from scheduler.local import free_port


class FaultProxy:
    """TCP proxy to ``target_port``; while ``down`` it accepts and drops connections at once."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self.target = target_port
        self.down = True
        self.dropped = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self.down:
                self.dropped += 1
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._sock.close()
