"""Screenshot a page that needs a log-in first, in one headless Chromium session (DevTools protocol).

`chromium --screenshot` starts a new browser per call, so a session cookie set by a log-in page is gone by the
next call. This opens `--first` (e.g. a log-in URL that sets the cookie), then `--url`, in the same tab, and
saves a PNG of the second page. Used by tools/screenshot_airflow.sh.

    .venv/bin/python tools/cdp_screenshot.py --first URL --url URL --out page.png [--width 2000 --height 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.request import urlopen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _shoot(ws_url: str, first: str, url: str, settle_s: float) -> bytes:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params) -> dict:
            msg_id = next(ids)
            await ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
            async for msg in ws:
                data = json.loads(msg.data)
                if data.get("id") == msg_id:
                    if "error" in data:
                        raise RuntimeError(f"{method}: {data['error']}")
                    return data.get("result", {})
            raise RuntimeError("the browser closed the connection")

        await call("Page.enable")
        for target in (first, url):
            await call("Page.navigate", url=target)
            await asyncio.sleep(settle_s)  # single-page apps keep loading data after the load event
        shot = await call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["data"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--first", required=True, help="page opened first (a log-in that sets a cookie)")
    ap.add_argument("--url", required=True, help="page to capture")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--width", type=int, default=2000)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=8.0, help="seconds to let each page load (default 8)")
    args = ap.parse_args(argv)
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        print("cdp_screenshot: chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    port = _free_port()
    with tempfile.TemporaryDirectory() as profile:
        browser = subprocess.Popen(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--window-size={args.width},{args.height}", f"--remote-debugging-port={port}",
             f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    pages = json.load(urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2))
                    ws_url = next(p["webSocketDebuggerUrl"] for p in pages if p.get("type") == "page")
                    break
                except (OSError, StopIteration):
                    time.sleep(0.2)
            else:
                print("cdp_screenshot: chromium did not open its debugging port", file=sys.stderr)
                return 1
            png = asyncio.run(_shoot(ws_url, args.first, args.url, args.settle))
        finally:
            browser.terminate()
            browser.wait(timeout=10)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png):,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
