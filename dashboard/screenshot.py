"""Render the dashboard in headless Chromium: a PNG for the docs and the DOM text for a content check.

    .venv/bin/python -m dashboard.screenshot --api-url http://127.0.0.1:8000 --out docs/img/dashboard.png

Starts `streamlit run dashboard/app.py` on a free loopback port (against the given API), loads it in a
fresh Chromium profile and waits until the page shows the recommendations beside the recent reads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars"]


def chromium() -> str | None:
    """Path of the Debian chromium binary, if installed (`apt-get install -y chromium`)."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """`streamlit run dashboard/app.py` on loopback; yields its URL once its health endpoint answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "streamlit", "run", str(ROOT / "dashboard" / "app.py"),
           "--server.address", "127.0.0.1", "--server.port", str(port)]  # the rest: .streamlit/config.toml
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}")
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise TimeoutError("streamlit did not start within 120 s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _stop_group(proc: subprocess.Popen) -> None:
    """Terminate a process started with its own session and every helper it forked."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline:  # helpers are reparented, not our children: wait until the group is gone
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


def capture(url: str, png: Path, ready_text: str, width: int = 1600, height: int = 1300,
            timeout_s: float = 90.0) -> str:
    """Open `url` in headless Chromium, wait until the page shows `ready_text`, save a PNG, return the text.

    Driven over the DevTools protocol because Streamlit renders after a websocket round trip to the
    script: a fixed `--screenshot` at load time would capture an empty page.
    """
    import base64
    import json

    from websockets.sync.client import connect

    binary = chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (apt-get install -y chromium)")
    png.parent.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    # Chromium's helper processes can still write to the profile for a moment after the browser exits,
    # so the whole process group is stopped and a leftover file in the throwaway profile is not an error.
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={width},{height}", f"--remote-debugging-port={port}",
                                 "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    targets = httpx.get(f"http://127.0.0.1:{port}/json", timeout=2).json()
                    page = next(t for t in targets if t["type"] == "page")
                    break
                except (httpx.HTTPError, StopIteration):
                    if time.time() > deadline:
                        raise TimeoutError("chromium's DevTools endpoint did not come up") from None
                    time.sleep(0.2)
            with connect(page["webSocketDebuggerUrl"], max_size=2**26) as ws:
                ids = iter(range(1, 10**6))

                def call(method: str, **params) -> dict:
                    msg_id = next(ids)
                    ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    while True:
                        reply = json.loads(ws.recv())
                        if reply.get("id") == msg_id:
                            if "error" in reply:
                                raise RuntimeError(f"{method}: {reply['error']}")
                            return reply["result"]

                def text() -> str:
                    got = call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
                    return got["result"].get("value", "")

                call("Page.enable")
                call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                     mobile=False)
                call("Page.navigate", url=url)
                deadline = time.time() + timeout_s
                while ready_text not in text():
                    if time.time() > deadline:
                        raise TimeoutError(f"the page never showed {ready_text!r}; it shows: {text()[:500]!r}")
                    time.sleep(0.5)
                time.sleep(2.0)  # let charts finish their layout after the data arrived
                shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=False)
                png.write_bytes(base64.b64decode(shot["data"]))
                return text()
        finally:
            _stop_group(proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", required=True, help="the recommendation API the dashboard talks to")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "dashboard.png")
    args = parser.parse_args(argv)
    with streamlit_server({"NEWSREC__DASHBOARD__API_URL": args.api_url}) as url:
        page_text = capture(url, args.out, ready_text="Recent reads")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes); page text has {len(page_text):,} characters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
