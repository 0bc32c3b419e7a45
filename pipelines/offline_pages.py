"""HTML pages that open without internet: third-party pages the product writes load their assets locally.

Private deployments often have no internet, and a page that loads Bootstrap or Vega from a CDN opens blank
there. The product's own pages are self-contained (pipelines/eval_report.py: inline PNG, no script). Two
third-party writers are not:

- Great Expectations' data docs (Bootstrap, jQuery, bootstrap-table, Font Awesome, Vega, a logo on S3):
  `localise_site(docs_dir)` copies the vendored files into the site (`static/vendor/`) and rewrites every page
  to load them by relative path, so the site also works when copied or served elsewhere.
- `dvc plots show`: .dvc/config names `.dvc/plots_template.html`, whose scripts load the same vendored Vega
  from `pipelines/static/vendor/` relative to the default output folder `dvc_plots/`.

The files, their CDN addresses, versions, licenses and checksums are listed in
pipelines/static/vendor/SOURCES.json (refreshed by tools/vendor_assets.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from functools import cache
from pathlib import Path

log = logging.getLogger(__name__)

VENDOR_DIR = Path(__file__).resolve().parent / "static" / "vendor"
SITE_VENDOR = Path("static") / "vendor"  # inside a data-docs site
# GX's navbar logo comes from an S3 bucket; the site has the same picture under static/images/.
_GX_IMAGES = "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
# Its dark-mode stylesheet asks for a dark logo that the package does not ship: the site's own logo stands in.
_GX_MISSING_IMAGES = {"full_logo_dark.png": "logo-long.png"}
# an asset a page loads (not a link a person may follow): script src, stylesheet/icon href, img src, CSS url()
REMOTE_ASSET = re.compile(r"<(?:script|img)\b[^>]*\bsrc=\"(https?://[^\"]+)\"|<link\b[^>]*\bhref=\"(https?://[^\"]+)\""
                          r"|url\(['\"]?(https?://[^'\")]+)", re.IGNORECASE)


@cache
def vendored_urls() -> dict[str, str]:
    """CDN address -> vendored file (relative to the vendor folder), from SOURCES.json."""
    sources = json.loads((VENDOR_DIR / "SOURCES.json").read_text())
    return {url: asset["file"] for asset in sources["assets"] for url in asset["urls"]}


def remote_assets(page: str) -> list[str]:
    """The addresses of assets a page would fetch from the network."""
    return [next(g for g in m.groups() if g) for m in REMOTE_ASSET.finditer(page)]


def localise_page(page: str, vendor_rel: str, images_rel: str) -> str:
    """`page` with every vendored CDN address replaced by `vendor_rel/<file>` and GX's remote logo by the site's
    own `images_rel/<file>` (both relative to the page)."""
    # longest first: "vega@5" must not eat the front of "vega@5.20.2"
    for url, name in sorted(vendored_urls().items(), key=lambda item: -len(item[0])):
        page = page.replace(f'"{url}"', f'"{vendor_rel}/{name}"')
    for missing, stand_in in _GX_MISSING_IMAGES.items():
        page = page.replace(f"{_GX_IMAGES}{missing}", f"{_GX_IMAGES}{stand_in}")
    for quote in "\"'":
        page = page.replace(f"{quote}{_GX_IMAGES}", f"{quote}{images_rel}/")
    return page


def localise_site(docs_dir: str | Path) -> list[str]:
    """Make a built data-docs site load nothing from the network; the remote assets still left (logged), if any."""
    docs = Path(docs_dir)
    target = docs / SITE_VENDOR
    shutil.copytree(VENDOR_DIR, target, dirs_exist_ok=True)
    left: set[str] = set()
    for path in docs.rglob("*.html"):
        text = path.read_text(encoding="utf-8")
        vendor_rel = Path(os.path.relpath(target, path.parent)).as_posix()
        images_rel = Path(os.path.relpath(docs / "static" / "images", path.parent)).as_posix()
        new = localise_page(text, vendor_rel, images_rel)
        if new != text:
            path.write_text(new, encoding="utf-8")
        left.update(remote_assets(new))
    if left:
        log.warning("data docs still load %d asset(s) from the network (a Great Expectations upgrade changed its "
                    "pages; run tools/vendor_assets.py): %s", len(left), ", ".join(sorted(left)))
    return sorted(left)
