"""Headless Chromium over the DevTools protocol, for checking HTML pages as a person would see them.

Used by tests/test_report_browser.py; also a script that screenshots a page::

    python tests/browser.py runs/ants/report.html docs/report-ants-bees.png

Chromium runs with a fresh profile and every background network feature off (the network is
closed; those connections would only fail). The page is opened from a file:// URL.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--hide-scrollbars", "--mute-audio",
]


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    console_errors: list[str] = field(default_factory=list)
    evaluation: Any = None
    screenshot: bytes = b""


class Browser:
    """One headless Chromium process and one page target, driven over its DevTools websocket."""

    def __init__(self, executable: str, width: int = 1280, height: int = 900, timeout: float = 30.0,
                 flags: tuple[str, ...] = ()) -> None:
        import websocket  # websocket-client

        self.profile = tempfile.mkdtemp(prefix="fk-chromium-")
        self.timeout = timeout
        self.process = subprocess.Popen(
            [executable, *FLAGS, *flags, f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
             f"--window-size={width},{height}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        url = self._devtools_url()
        self.ws = websocket.create_connection(url, timeout=timeout, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=width, height=height, deviceScaleFactor=1, mobile=False)

    def _devtools_url(self) -> str:
        deadline = time.monotonic() + self.timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline()
            if not line and self.process.poll() is not None:
                break
            lines.append(line)
            if "DevTools listening on " in line:
                return line.split("DevTools listening on ", 1)[1].strip()
        raise RuntimeError("chromium did not start:\n" + "".join(lines[-20:]))

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while time.monotonic() < deadline:
            event = json.loads(self.ws.recv())
            self.events.append(event)
            if event.get("method") == method:
                return event
        raise TimeoutError(method)

    def open(self, path: Path | str, script: str, screenshot: bool = True) -> PageResult:
        """Load a file (or an http:// URL), run ``script`` (an expression; its value comes back as JSON), collect every
        console error, uncaught exception and failed load, and take a full-page screenshot."""
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=True)
        self.events.clear()
        url = path if isinstance(path, str) and path.startswith(("http://", "https://")) else Path(path).resolve().as_uri()
        self.call("Page.navigate", session=True, url=url)
        self.wait_for("Page.loadEventFired")
        value = self.call("Runtime.evaluate", session=True, expression=script, returnByValue=True, awaitPromise=True)
        result = PageResult(console_errors=self._errors(), evaluation=value.get("result", {}).get("value"))
        if screenshot:
            size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            shot = self.call("Page.captureScreenshot", session=True, format="png", clip=clip, captureBeyondViewport=True)
            result.screenshot = base64.b64decode(shot["data"])
        return result

    def evaluate(self, expression: str):
        """The JSON value of ``expression`` on the open page (promises awaited)."""
        value = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in value:
            raise RuntimeError(f"page script failed: {value['exceptionDetails'].get('text')}")
        return value.get("result", {}).get("value")

    def set_file(self, selector: str, path: Path) -> None:
        """Choose ``path`` in the page's file input ``selector``, as a person picking a file does
        (the input's change event fires)."""
        root = self.call("DOM.getDocument", session=True)["root"]["nodeId"]
        node = self.call("DOM.querySelector", session=True, nodeId=root, selector=selector)["nodeId"]
        self.call("DOM.setFileInputFiles", session=True, nodeId=node, files=[str(Path(path).resolve())])

    def screenshot(self) -> bytes:
        size = self.call("Page.getLayoutMetrics", session=True)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.call("Page.captureScreenshot", session=True, format="png", clip=clip, captureBeyondViewport=True)
        return base64.b64decode(shot["data"])

    def console_errors(self) -> list[str]:
        return self._errors()

    def _errors(self) -> list[str]:
        errors = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                errors.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                errors.append("exception: " + params.get("exceptionDetails", {}).get("text", ""))
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append("log: " + params["entry"].get("text", "") + " " + params["entry"].get("url", ""))
            elif method == "Network.loadingFailed":
                errors.append("network: " + params.get("errorText", ""))
        return errors

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# What the report test asks the page: its sections, and for every image its natural size, its
# drawn size and how many distinct colours a canvas copy of it has (1 means blank).
INSPECT_SCRIPT = """
(async () => {
  const images = [...document.images];
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const colours = img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
    if (!canvas.width || !canvas.height) return 0;
    const ctx = canvas.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
    const seen = new Set();
    for (let i = 0; i < data.length && seen.size < 64; i += 4 * 7) seen.add(data[i] << 16 | data[i + 1] << 8 | data[i + 2]);
    return seen.size;
  };
  return {
    title: document.title,
    sections: [...document.querySelectorAll('section')].map(s => ({id: s.id, heading: (s.querySelector('h2') || {}).textContent})),
    images: images.map(img => ({
      section: (img.closest('section') || {}).id || null, cls: img.className, alt: img.alt,
      naturalWidth: img.naturalWidth, naturalHeight: img.naturalHeight,
      width: img.getBoundingClientRect().width, height: img.getBoundingClientRect().height,
      colours: colours(img), complete: img.complete,
    })),
    tables: [...document.querySelectorAll('section table')].map(t => ({section: t.closest('section').id, rows: t.rows.length})),
    text: document.body.innerText,
  };
})()
"""


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Screenshot an HTML page with headless Chromium.")
    parser.add_argument("page")
    parser.add_argument("png")
    parser.add_argument("--width", type=int, default=1280)
    args = parser.parse_args(argv)
    executable = find_chromium()
    if executable is None:
        raise SystemExit("chromium not found (apt-get install chromium)")
    with Browser(executable, width=args.width) as browser:
        result = browser.open(Path(args.page), INSPECT_SCRIPT)
    Path(args.png).write_bytes(result.screenshot)
    print(f"{args.png}: {len(result.screenshot)} bytes; console errors: {result.console_errors or 'none'}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
