"""Fault injection helpers for chaos runs and tests (loopback only)."""

from __future__ import annotations

import contextlib
import socket
import threading

from devtools.processes import free_port


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


class HttpFaultProxy:
    """HTTP proxy to an S3 server on ``target_port`` that injects S3-level faults.

    ``down``: every connection is dropped at once (the server unreachable); ``fail_heads``: HEAD
    requests (the completion-marker check) are answered 503 SlowDown while others pass.
    """

    def __init__(self, target_port: int) -> None:
        import http.server

        self.port, self.target = free_port(), target_port
        self.down = False
        self.fail_heads = False
        self.dropped = self.heads_failed = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args) -> None:
                pass

            def _forward(self) -> None:
                if proxy.down:
                    proxy.dropped += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                if proxy.fail_heads and self.command == "HEAD":
                    proxy.heads_failed += 1
                    self.send_response(503, "Slow Down")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = self._body()
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "connection", "expect")}
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                import http.client

                upstream = http.client.HTTPConnection("127.0.0.1", proxy.target, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                finally:
                    upstream.close()
                self.send_response(answer.status, answer.reason)
                for key, value in answer.getheaders():
                    if key.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _body(self) -> bytes | None:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _forward

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
