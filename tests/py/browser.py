"""A headless Chromium driven over the DevTools protocol: just what the page tests need.

Chromium is Debian's `chromium` package (scripts/test installs it); the protocol goes over a
WebSocket (the pinned `websocket-client`). One browser per test, with its own profile in a
temporary directory, stopped at the end. Page scripts never run (the pages send a CSP that
allows none and have none); the test reads the DOM with `Runtime.evaluate`, which DevTools
runs outside the page's CSP.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import websocket

TIMEOUT = 20.0


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no chromium on PATH: scripts/test installs Debian's `chromium`")


class Browser:
    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="hubmesh-chromium-"))
        self.proc = subprocess.Popen(
            [
                chromium_path(),
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as r:
            targets = json.load(r)
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=TIMEOUT)
        self.next_id = 0
        self.events: list[dict] = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, session: str | None = None, **params) -> dict:
        """One DevTools command; `session` names an attached target (an out-of-process frame)."""
        self.next_id += 1
        mine = self.next_id
        message = {"id": mine, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self.ws.send(json.dumps(message))
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mine:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)
        raise TimeoutError(method)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for i, e in enumerate(self.events):
                if e.get("method") == method:
                    return self.events.pop(i)
            self.events.append(json.loads(self.ws.recv()))
        raise TimeoutError(method)

    def goto(self, url: str) -> None:
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_event("Page.loadEventFired")

    def js(self, expression: str):
        """Evaluates `expression` in the page and returns its value (JSON-able)."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"{expression}: {r['exceptionDetails']}")
        return r["result"].get("value")

    def submit(self, form_selector: str, fields: dict[str, str]) -> None:
        """Fills a form's fields and submits it, as a person pressing its button would."""
        for name, value in fields.items():
            self.js(
                f"(() => {{ const f = document.querySelector({json.dumps(form_selector)});"
                f" const e = f.elements[{json.dumps(name)}];"
                f" if (e.type === 'checkbox') e.checked = {json.dumps(bool(value))};"
                f" else e.value = {json.dumps(value)}; }})()"
            )
        self.events.clear()
        self.js(f"document.querySelector({json.dumps(form_selector)}).requestSubmit()")
        self.wait_event("Page.loadEventFired")

    def url(self) -> str:
        return self.js("location.href")

    def text(self, selector: str) -> str | None:
        return self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " return e ? e.textContent : null; })()"
        )

    def texts(self, selector: str) -> list[str]:
        return self.js(
            f"Array.from(document.querySelectorAll({json.dumps(selector)})).map(e => e.textContent.trim())"
        )

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data

    def close(self) -> None:
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            shutil.rmtree(self.profile, ignore_errors=True)
