"""ctxbench.bench.report.html: the static site built from the fixture JSONL, checked on disk and in
headless Chromium (loads from file:// without console errors, every plot present and
non-empty, tables hold the fixture's numbers).

The browser is driven over the DevTools protocol on loopback with a ~60-line websocket
client (no extra Python package). Skipped, with the reason, only where no Chromium
binary is installed (Debian: ``apt-get install chromium``).
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ctxbench.bench.report.html import build_report, pareto_front
from ctxbench.bench.report.tables import REFERENCE
from ctxbench.bench.results import read_jsonl

ASSETS = Path(__file__).parent / "assets" / "report"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The report built from a copy of the fixture (results/ layout: <root>/<task>/runs.jsonl)."""
    root = tmp_path_factory.mktemp("results")
    for task in ("clf", "qa"):
        shutil.copytree(ASSETS / task, root / task)
    build_report(root, n_boot=1000)
    return root


def _expected_cells(task: str) -> dict[tuple[str, int], float]:
    """Seed means of the main metric, straight from the fixture JSONL (not via bench.tables)."""
    out: dict[tuple[str, int], list[float]] = {}
    for r in read_jsonl(ASSETS / task / "runs.jsonl"):
        if r["status"] == "ok":
            out.setdefault((r["spec"]["strategy"]["label"], r["budget"]), []).append(r["metrics"][r["main_metric"]])
    return {k: float(np.mean(v)) for k, v in out.items()}


# --------------------------------------------------------------------------- on disk


def test_site_files(site):
    assert (site / "index.html").exists()
    for task in ("clf", "qa"):
        page = (site / task / "report.html").read_text()
        pngs = sorted((site / task / "plots").glob("*.png"))
        assert len(pngs) >= 5, pngs  # metric, pareto, throughput, memory, buckets
        for png in pngs:
            data = png.read_bytes()
            assert data.startswith(PNG_MAGIC) and len(data) > 2000, png
            assert f'src="plots/{png.name}"' in page
    index = (site / "index.html").read_text()
    assert 'href="clf/report.html' in index and 'href="qa/report.html' in index
    clf = (site / "clf" / "report.html").read_text()
    # the summary, its forest plot of Δ vs head and the length histogram come before any detail table
    first = clf.index('id="summary"')
    assert first < clf.index("-forest.png") < clf.index("-lengths.png") < clf.index("<h2 id=\"clf-")
    assert index.index("<table") < index.index("Every task")  # the index opens on the summaries
    assert "silver" in (site / "qa" / "report.html").read_text()
    assert "oom" in (site / "clf" / "report.html").read_text()  # the planted unfinished run is listed


def test_report_is_reproducible(site, tmp_path):
    for task in ("clf", "qa"):
        shutil.copytree(ASSETS / task, tmp_path / task)
    build_report(tmp_path, n_boot=1000)
    for f in ("index.html", "clf/report.html", "qa/report.html"):
        assert (tmp_path / f).read_text().replace(str(tmp_path), "") == (site / f).read_text().replace(str(site), "")
    for png in (site / "clf" / "plots").glob("*.png"):
        assert (tmp_path / "clf" / "plots" / png.name).read_bytes() == png.read_bytes()


def test_pareto_front():
    cost = np.array([1.0, 2.0, 3.0, 4.0, 2.5])
    value = np.array([0.5, 0.4, 0.7, 0.9, 0.6])
    assert list(pareto_front(cost, value)) == [0, 4, 2, 3]
    assert list(pareto_front(cost, -value, higher_is_better=False)) == [0, 4, 2, 3]


# --------------------------------------------------------------------------- headless Chromium


def _browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class WebSocket:
    """Just enough RFC 6455 for the DevTools protocol: masked text frames out, text in."""

    def __init__(self, port: int, path: str, timeout: float = 15.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            head += chunk
        head, self.buf = head.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake refused: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, text: str) -> None:
        payload = text.encode()
        n = len(payload)
        header = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                  bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16 else
                                  bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        masked = (np.frombuffer(payload, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)).tobytes()
        self.sock.sendall(header + mask + masked)

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._read(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read(8))[0]
            data = self._read(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the browser")
            if opcode in (0x9, 0xA):  # ping / pong: not used by DevTools
                continue
            parts.append(data)
            if b0 & 0x80:
                return b"".join(parts).decode()


class Browser:
    """Headless Chromium with a private profile, driven over DevTools on loopback."""

    def __init__(self, binary: str, profile: Path):
        self.proc = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--no-default-browser-check",
             "--disable-dev-shm-usage", "--window-size=1280,800", f"--user-data-dir={profile}",
             "--remote-debugging-address=127.0.0.1",
             "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.ws = WebSocket(int(port), path)
        self.next_id = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)

    def call(self, method: str, params: dict | None = None, session: bool = False) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = self.session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def load(self, url: str, timeout: float = 15.0) -> list[str]:
        """Navigate and wait for the load event; returns the console errors seen meanwhile."""
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not load")
            self.events.append(json.loads(self.ws.recv()))
        self.evaluate("new Promise(r => setTimeout(r, 100))")  # let late console messages arrive
        return self.errors()

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e.get("method"), e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return out

    def evaluate(self, expression: str) -> Any:
        res = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                        session=True)
        if "exceptionDetails" in res:
            raise RuntimeError(res["exceptionDetails"])
        return res["result"].get("value")

    def close(self) -> None:
        try:
            if hasattr(self, "ws"):
                self.call("Browser.close")
        except (OSError, RuntimeError, ConnectionError):
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


IMAGES = ("JSON.stringify(Array.from(document.images).map(i => "
          "({src: i.getAttribute('src'), ok: i.complete, w: i.naturalWidth, h: i.naturalHeight})))")
TABLES = "JSON.stringify(Array.from(document.querySelectorAll('table')).map(t => t.innerText))"
LINKS = "JSON.stringify(Array.from(document.querySelectorAll('a')).map(a => a.href))"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    binary = _browser()
    if binary is None:
        pytest.skip("no Chromium binary (looked for " + ", ".join(BROWSERS) + "); install Debian's `chromium` "
                    "package to run the headless report check")
    b = Browser(binary, tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_checker_sees_broken_pages(browser, tmp_path):
    """The harness can fail: a missing image and a console error are both reported."""
    (tmp_path / "broken.html").write_text('<!DOCTYPE html><html><body><img src="missing.png">'
                                          '<script>console.error("planted")</script></body></html>')
    errors = browser.load((tmp_path / "broken.html").as_uri())
    assert any("planted" in e for e in errors), errors
    assert any("missing.png" in e for e in errors), errors
    images = json.loads(browser.evaluate(IMAGES))
    assert images and images[0]["w"] == 0


def test_report_in_headless_chromium(browser, site):
    errors = browser.load((site / "index.html").as_uri())
    assert errors == [], errors
    links = json.loads(browser.evaluate(LINKS))
    pages = sorted({link.split("#")[0] for link in links if link.endswith(".html") or ".html#" in link})
    assert [Path(p).parent.name for p in pages if p.endswith("report.html")] == ["clf", "qa"]
    for task in ("clf", "qa"):
        url = (site / task / "report.html").as_uri()
        assert url in pages
        errors = browser.load(url)
        assert errors == [], f"{task}: {errors}"
        images = json.loads(browser.evaluate(IMAGES))
        on_disk = {p.name for p in (site / task / "plots").glob("*.png")}
        assert {Path(i["src"]).name for i in images} == on_disk and len(images) >= 5
        for i in images:
            assert i["ok"] and i["w"] > 100 and i["h"] > 100, i
        tables = json.loads(browser.evaluate(TABLES))
        assert tables[0].startswith("b\tstrategy\t")  # the summary comes first
        metric_table = next(t for t in tables[1:]  # the first detail table: strategy × budget
                            if any(line.split("\t")[0].strip() == REFERENCE for line in t.splitlines()))
        for (strategy, budget), value in _expected_cells(task).items():
            row = next(line for line in metric_table.splitlines() if line.split("\t")[0].strip() == strategy)
            assert f"{value:.3f} [" in row, (strategy, budget, value, row)
        if task == "clf":
            # planted: tail undecided against head at every budget; sliding significantly better (Holm)
            rows = {line.split("\t")[0].strip(): line for line in metric_table.splitlines()}
            assert rows["sliding[max_windows=4,pool=mean]"].count("▲") == 2
            assert "▲" not in rows["tail"] and "▼" not in rows["tail"]
            assert any("n=24" in t for t in tables)  # length-bucket counts of the fixture at b=32
            summary = tables[0].splitlines()
            assert sum("▲" in line for line in summary) == 2 and all("sliding" in line for line in summary
                                                                       if "▲" in line)


def test_summary_is_on_the_first_screen(browser, site, tmp_path):
    """The index and each task page open on the default sweep's summary table: its top is inside the
    first screen (1280×800), above any detail table; a screenshot of that screen is taken."""
    for page in ("index.html", "clf/report.html", "qa/report.html"):
        assert browser.load((site / page).as_uri()) == []
        box = json.loads(browser.evaluate(
            "JSON.stringify((() => { const t = document.querySelector('table'); const r = t.getBoundingClientRect();"
            " return {top: r.top, h: window.innerHeight, w: window.innerWidth, head: t.innerText.split('\\n')[0]};"
            " })())"))
        assert box["head"].startswith("b\tstrategy") and 0 <= box["top"] < box["h"], (page, box)
        shot = base64.b64decode(browser.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"])
        assert shot.startswith(PNG_MAGIC) and len(shot) > 5000
        (tmp_path / page.replace("/", "-")).with_suffix(".png").write_bytes(shot)
