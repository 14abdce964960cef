"""A loopback HTTP server (127.0.0.1 only) serving the cases a LAION download meets."""

from __future__ import annotations

import io
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def image_bytes(fmt: str, size: tuple[int, int] = (96, 80), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def big_flat_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (40, 90, 200)).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Routes:
    """path → (status, content type, body); "/stall" waits on ``release`` before answering."""

    bodies: dict[str, tuple[int, str, bytes]] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)
    stall_s: float = 5.0


def default_routes() -> Routes:
    jpeg = image_bytes("JPEG", seed=1)
    routes = Routes()
    routes.bodies.update(
        {
            "/a.jpg": (200, "image/jpeg", jpeg),
            "/b.png": (200, "image/png", image_bytes("PNG", seed=2)),
            "/c.webp": (200, "image/webp", image_bytes("WEBP", seed=3)),
            "/d.jpg": (200, "image/jpeg", image_bytes("JPEG", (120, 90), seed=4)),
            "/e.jpg": (200, "image/jpeg", image_bytes("JPEG", (100, 100), seed=5)),
            "/a-copy.jpg": (200, "image/jpeg", jpeg),  # the same bytes at another URL
            "/missing.jpg": (404, "text/html", b"<html>not found</html>"),
            "/broken.jpg": (500, "text/plain", b"internal error"),
            "/truncated.jpg": (200, "image/jpeg", image_bytes("JPEG", (200, 200), seed=6)[:1500]),
            "/page.html": (200, "text/html", b"<!doctype html><html><body>an image?</body></html>"),
            "/huge.png": (200, "image/png", big_flat_png(3000)),
            "/tiny.png": (200, "image/png", image_bytes("PNG", (16, 16), seed=7)),
        }
    )
    return routes


def _handler(routes: Routes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            routes.hits[self.path] += 1
            if self.path == "/stall.jpg":
                routes.release.wait(routes.stall_s)  # bounded: never hangs the test run
                return
            status, ctype, body = routes.bodies.get(self.path, (404, "text/plain", b"no"))
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve(routes: Routes) -> Iterator[str]:
    """Yield the base URL of a server on 127.0.0.1 at a free port; shut down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(routes))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        routes.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
