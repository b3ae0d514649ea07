"""A small HTTP file server on 127.0.0.1 (a thread) with the faults downloads must survive.

    server = FileServer({"x.img.xz": data, "SHA256SUMS": sums})
    server.url("x.img.xz")       # http://127.0.0.1:PORT/x.img.xz
    server.cut("x.img.xz", after=40_000, times=1)  # close the next response for it after 40 kB of its body
    server.ignore_range = True   # answer 200 with the whole file to a Range request
    server.wrong["x.img.xz"] = other_bytes         # serve other bytes (same headers otherwise)
    server.delay = 0.05          # seconds between 8 KiB chunks (a slow mirror)
    server.trickle["x.img.xz"] = 0.1               # its body one byte at a time, 0.1 s apart (a stalling mirror)
    server.endless.add("x.img.xz")                 # 200 with no Content-Length, then zeros until the client hangs up
    server.validators = False    # no ETag, no Last-Modified: nothing a download can resume by
    server.log                   # (path, Range header or None, status) of every request
    server.sent                  # body bytes sent, all requests together

Files are served with a strong ETag and Last-Modified; `Range: bytes=N-` gets 206 when If-Range matches (or is
absent), as real mirrors do. A path not in `files` is a 404. A body without Content-Length ends when the server
closes the connection (HTTP/1.0).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FileServer:
    """Serve `files` (path -> bytes) from a thread until `close()`."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = dict(files)
        self.wrong: dict[str, bytes] = {}
        self.cuts: dict[str, list[int]] = {}  # path -> [responses still to cut, body bytes before the cut]
        self.ignore_range = False
        self.delay = 0.0
        self.trickle: dict[str, float] = {}
        self.endless: set[str] = set()
        self.validators = True
        self.log: list[tuple[str, str | None, int]] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def cut(self, path: str, after: int, times: int = 1) -> None:
        """Close the next `times` responses for `path` after `after` bytes of their body."""
        self.cuts[path] = [times, after]

    def requests_for(self, path: str) -> list[tuple[str, str | None, int]]:
        return [entry for entry in self.log if entry[0] == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: FileServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet
            pass

        def do_GET(self) -> None:
            path = self.path.lstrip("/")
            range_header = self.headers.get("Range")
            if path not in server.files:
                self._record(path, range_header, 404)
                self.send_error(404)
                return
            if path in server.endless:
                self._record(path, range_header, 200)
                self.send_response(200)
                self.end_headers()
                self._send_endless()
                return
            data = server.files[path]
            etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            start = 0
            match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
            if_range = self.headers.get("If-Range")
            if match and not server.ignore_range and (if_range is None or if_range == etag):
                start = int(match.group(1))
                if start >= len(data):
                    self._record(path, range_header, 416)
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                status = 206
            else:
                self.send_response(200)
                status = 200
            self._record(path, range_header, status)
            self.send_header("Content-Length", str(len(data) - start))
            if server.validators:
                self.send_header("ETag", etag)
                self.send_header("Last-Modified", "Tue, 01 Dec 2026 00:00:00 GMT")
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            body = server.wrong.get(path, data)[start:]
            with server._lock:
                times, after = server.cuts.get(path, [0, 0])
                cut = after if times > 0 else None
                if cut is not None:
                    server.cuts[path][0] -= 1
            self._send(body if cut is None else body[:cut], 1 if path in server.trickle else 8192,
                       server.trickle.get(path, server.delay))
            if cut is not None:
                self.close_connection = True

        def _send(self, body: bytes, size: int = 8192, delay: float = 0.0) -> None:
            """Send `body` in pieces of `size` bytes, `delay` seconds apart, until done or the client hangs up."""
            for i in range(0, len(body), size):
                if delay:
                    time.sleep(delay)
                if not self._write(body[i:i + size]):
                    return

        def _send_endless(self) -> None:
            chunk = bytes(64 << 10)
            while self._write(chunk):
                pass

        def _write(self, chunk: bytes) -> bool:
            """Send `chunk` (counted in `sent` before it goes: a client done reading it has it counted); False, and
            not counted, once the client has hung up."""
            with server._lock:
                server.sent += len(chunk)
            try:
                self.wfile.write(chunk)
                self.wfile.flush()
            except OSError:
                with server._lock:
                    server.sent -= len(chunk)
                return False
            return True

        def _record(self, path: str, range_header: str | None, status: int) -> None:
            with server._lock:
                server.log.append((path, range_header, status))

    return Handler
