"""A headless Chromium driven over the DevTools protocol (a small synchronous websocket client).

Opens a page, records console errors, uncaught exceptions and failed loads, checks that every
``<img>`` decoded, and takes screenshots. Chromium runs in its own process group with a fresh
profile and is stopped by its PID.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
ENSURE_SCRIPT = Path(__file__).with_name("ensure_chromium.sh")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-default-apps",
    "--disable-extensions",
    "--mute-audio",
    "--hide-scrollbars",
)


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def ensure_chromium(timeout_s: float = 900) -> str | None:
    """Chromium's path, installing it with ``ensure_chromium.sh`` when missing and possible."""
    found = find_chromium()
    if found:
        return found
    can_install = os.geteuid() == 0 or (
        shutil.which("sudo") is not None
        and subprocess.run(["sudo", "-n", "true"], capture_output=True, check=False).returncode == 0
    )
    if can_install and shutil.which("apt-get"):
        subprocess.run(
            ["bash", str(ENSURE_SCRIPT)], check=False, timeout=timeout_s, capture_output=True
        )
    return find_chromium()


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)
    exceptions: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        return [*self.console_errors, *self.exceptions, *self.failed_requests, *self.log_errors]


class Browser:
    """``with Browser() as b: page = b.open(url); ...``"""

    def __init__(self, executable: str, width: int = 1400, height: int = 1000) -> None:
        self.executable = executable
        self.width, self.height = width, height
        self._profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._stack = contextlib.ExitStack()
        self._next_id = 0
        self._session: str | None = None
        self.events: list[dict[str, Any]] = []

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self) -> Browser:
        self._proc = subprocess.Popen(
            [
                self.executable,
                *FLAGS,
                f"--user-data-dir={self._profile}",
                "--remote-debugging-port=0",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: stopped by PID with its children
        )
        port_file = self._profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode} at start")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port in 30 s")
            time.sleep(0.05)
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = self._stack.enter_context(
            connect(f"ws://127.0.0.1:{port}{path}", max_size=None, proxy=None, open_timeout=10)
        )
        target = self.send("Target.createTarget", {"url": "about:blank"}, session=False)
        attached = self.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True},
            session=False,
        )  # fmt: skip
        self._session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
        )
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self._stack.close()  # closes the websocket
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
        shutil.rmtree(self._profile, ignore_errors=True)

    # -- protocol -------------------------------------------------------------------------------
    def send(
        self, method: str, params: dict[str, Any] | None = None, session: bool = True,
        timeout_s: float = 60,
    ) -> dict[str, Any]:  # fmt: skip
        assert self._ws is not None
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self._session:
            msg["sessionId"] = self._session
        self._ws.send(json.dumps(msg))
        deadline = time.monotonic() + timeout_s
        while True:
            raw = self._ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            if "method" in reply:
                self.events.append(reply)

    def wait_event(self, method: str, timeout_s: float = 60) -> dict[str, Any]:
        assert self._ws is not None
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {method} event in {timeout_s} s")
            msg = json.loads(self._ws.recv(timeout=left))
            if msg.get("method") == method:
                return msg
            if "method" in msg:
                self.events.append(msg)

    def evaluate(self, expression: str, timeout_s: float = 60) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            timeout_s=timeout_s,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- pages ----------------------------------------------------------------------------------
    def open(self, url: str, timeout_s: float = 60) -> None:
        self.events.clear()
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", timeout_s)

    def load_all_images(self, timeout_ms: int = 30000) -> list[str]:
        """Make lazy images load now; the ``src`` of every image that did not decode."""
        return list(
            self.evaluate(
                f"""(async () => {{
              const imgs = Array.from(document.images);
              imgs.forEach(i => {{ i.loading = 'eager'; }});
              const wait = i => (i.complete && i.naturalWidth > 0) ? Promise.resolve() :
                new Promise(r => {{ i.addEventListener('load', r); i.addEventListener('error', r);
                                    setTimeout(r, {timeout_ms}); }});
              await Promise.all(imgs.map(wait));
              await Promise.all(imgs.map(i => i.decode ? i.decode().catch(() => null) : null));
              return imgs.filter(i => !(i.complete && i.naturalWidth > 0))
                         .map(i => i.getAttribute('src'));
            }})()""",
                timeout_s=timeout_ms / 1000 + 30,
            )
        )

    def report(self) -> PageReport:
        """Console errors, exceptions, failed requests and error log entries seen so far."""
        self.send("Runtime.evaluate", {"expression": "1"})  # drain pending events
        out = PageReport()
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.console_errors.append(
                    " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif m == "Runtime.exceptionThrown":
                d = p.get("exceptionDetails", {})
                out.exceptions.append(str(d.get("exception", {}).get("description") or d))
            elif m == "Network.loadingFailed" and not p.get("canceled"):
                out.failed_requests.append(f"{p.get('errorText')} (request {p.get('requestId')})")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                entry = p["entry"]
                out.log_errors.append(f"{entry.get('text')} {entry.get('url', '')}".strip())
        return out

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.evaluate(
                "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
            )
            params |= {
                "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
            }
        data = self.send("Page.captureScreenshot", params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path
