"""The HTML report as a person sees it: headless Debian Chromium opens the file, offline.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``:
NUL-separated JSON on file descriptors 3 and 4), so the test needs nothing but the browser:
no web socket client, no downloaded browser. It collects console messages, uncaught
exceptions and browser log entries (a blocked fetch or a Content-Security-Policy violation
lands there), clicks a table header with real mouse events and takes a screenshot.
Skipped where ``/usr/bin/chromium`` is absent, except in CI (``CI=true``), where ``.ci/run``
installs it so the test always runs.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.fixtures import reports

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
TIMEOUT = 60.0


@pytest.fixture(autouse=True, scope="module")
def _browser() -> None:
    """Skip where no browser is installed; in CI (which installs it) that is a failure."""
    if os.access(CHROMIUM, os.X_OK):
        return
    if os.environ.get("CI") == "true":
        pytest.fail("no chromium in CI: .ci/run installs it so the browser test always runs")
    pytest.skip("no chromium here (apt-get install chromium)")


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, profile: Path) -> None:
        read_end, self._to_browser = os.pipe()
        self._from_browser, write_end = os.pipe()
        # The browser reads commands on fd 3 and writes replies on fd 4; the pipe ends are
        # first moved above 9 so that moving them to 3 and 4 cannot clobber one another.
        to_browser_r = fcntl.fcntl(read_end, fcntl.F_DUPFD_CLOEXEC, 10)
        from_browser_w = fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(read_end)
        os.close(write_end)
        command = (
            f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} '
            f"{to_browser_r}<&- {from_browser_w}>&-"
        )
        self.process = subprocess.Popen(
            ["bash", "-c", command, CHROMIUM, *FLAGS, f"--user-data-dir={profile}"],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, session: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one command and wait for its reply; events that arrive meanwhile are kept."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})  # type: ignore[no-any-return]
            self.events.append(reply)

    def wait_for(self, method: str) -> dict[str, Any]:
        """The first (kept or new) event called ``method``."""
        while True:
            for event in self.events:
                if event.get("method") == method:
                    return event
            self.events.append(self._read())

    def _read(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._from_browser], [], [], max(left, 0))
            assert ready, "chromium did not answer within a minute"
            chunk = os.read(self._from_browser, 1 << 20)
            assert chunk, "chromium closed the debugging pipe"
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(AssertionError):  # the browser may exit before it answers
            self.send("Browser.close")
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


class Page:
    """One tab of the browser, attached in flat mode."""

    def __init__(self, tools: DevTools) -> None:
        self.tools = tools
        target = tools.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = tools.send("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        return self.tools.send(method, self.session, **params)

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (pressed + released) in the middle of the element."""
        box = self.evaluate(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
            " e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.send(
                "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                clickCount=1,
            )  # fmt: skip

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions and browser log errors so far."""
        found = []
        for event in self.tools.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning"):
                found.append(f"console.{params['type']}: {params['args']}")
            elif method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(f"log: {params['entry']}")
        return found


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory, planted_models: Any) -> Path:
    """The page of two planted checkpoints and the hostile model, with a finding."""
    from relu_doctor.output.html import html_page

    planted = reports.planted_reports(planted_models)
    hostile = reports.hostile()
    finding = SimpleNamespace(
        rule="RD101", severity="error", model="deep.pt", site="act1", value=0.1875,
        threshold=0.1, message="<b>3 of 16</b> units dead", fix="relu-doctor fix --to reinit",
    )  # fmt: skip
    text = html_page(
        [planted["mlp"], planted["deep"], hostile],
        findings={"deep.pt": [finding]},
        command="relu-doctor check mlp.pt deep.pt --html report.html",
    )
    path = tmp_path_factory.mktemp("browser") / "report.html"
    path.write_text(text, encoding="utf-8")
    return path


def test_page_shows_table_pictures_and_sorts_without_errors(
    page_file: Path, tmp_path: Path
) -> None:
    tools = DevTools(tmp_path / "profile")
    try:
        page = Page(tools)
        page.send(
            "Emulation.setDeviceMetricsOverride",
            width=1280,
            height=1000,
            deviceScaleFactor=1,
            mobile=False,
        )
        tools.events.clear()  # about:blank's own events
        page.send("Page.navigate", url=page_file.as_uri())
        tools.wait_for("Page.loadEventFired")

        # The tables are shown: every site row of the first model, laid out with a size.
        rows = page.evaluate(
            "Array.from(document.querySelectorAll('#model-2 table.sites tbody tr'))"
            ".map(r => [r.dataset.site, r.getBoundingClientRect().height > 0,"
            " r.querySelector('[data-v]') !== null])"
        )
        assert [r[0] for r in rows] == ["act1", "act2"]
        assert all(r[1] for r in rows)
        # Every picture decoded (a broken data URI has naturalWidth 0).
        images = page.evaluate(
            "Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.width])"
        )
        assert len(images) == 4  # the timeline and one per model
        assert all(done and natural > 100 and shown > 100 for done, natural, shown in images)
        # The hostile names are text, not markup: no element was injected.
        assert page.evaluate("document.querySelectorAll('script').length") == 1
        assert page.evaluate("document.querySelectorAll('img[onerror]').length") == 0
        hostile_sites = page.evaluate(
            "Array.from(document.querySelectorAll('#model-3 table.sites tbody tr'))"
            ".map(r => r.dataset.site)"
        )
        assert hostile_sites == list(reports.HOSTILE_SITES)

        # Sorting by a real click on the "dead" header of the deep model's table.
        order = (
            "Array.from(document.querySelectorAll('#model-2 table.sites tbody tr'))"
            ".map(r => r.dataset.site)"
        )
        header = "document.querySelector('#model-2 table.sites th[data-col=dead]')"
        assert page.evaluate(f"{header}.textContent") == "dead"
        page.click("#model-2 table.sites th[data-col=dead]")
        assert page.evaluate(order) == ["act2", "act1"]  # 2 dead, then 3 dead
        assert page.evaluate(f"{header}.ariaSort") == "ascending"
        page.click("#model-2 table.sites th[data-col=dead]")
        assert page.evaluate(order) == ["act1", "act2"]
        assert page.evaluate(f"{header}.ariaSort") == "descending"

        size = page.send("Page.getLayoutMetrics")["cssContentSize"]
        whole = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = page.send(
            "Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=whole
        )
        screenshot = tmp_path / "report.png"
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        keep = os.environ.get("RELU_DOCTOR_SCREENSHOT")
        if keep:
            shutil.copyfile(screenshot, keep)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        _assert_not_blank(screenshot)
        assert page.problems() == []
    finally:
        tools.close()


def _assert_not_blank(png: Path) -> None:
    """The screenshot shows something: many distinct colours, not one flat page."""
    from matplotlib import image

    pixels = image.imread(png)
    assert pixels.shape[0] >= 900 and pixels.shape[1] >= 1200
    colours = {tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(2).tolist()}
    assert len(colours) > 20
