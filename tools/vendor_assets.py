"""Refresh the browser assets that the product's HTML pages load locally (pipelines/static/vendor/).

Great Expectations' data docs and `dvc plots show` load Bootstrap, jQuery, Vega and Font Awesome from public
CDNs, so on a machine without internet they open blank. The same files, taken from the npm registry at the
versions the pages ask for, are committed under pipelines/static/vendor/ with SOURCES.json (CDN address ->
file, package, version, license, sha256); pipelines/offline_pages.py points the pages at them.

Maintainers run this after a Great Expectations or DVC upgrade changes an asset (needs `npm`):

    .venv/bin/python tools/vendor_assets.py
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "pipelines" / "static" / "vendor"

# (npm package@version, path inside the package, vendored file, CDN addresses that page templates use for it)
ASSETS = [
    ("vega@5.33.1", "build/vega.min.js", "vega.min.js",
     ["https://cdn.jsdelivr.net/npm/vega@5", "https://cdn.jsdelivr.net/npm/vega@5.20.2"]),
    ("vega-lite@5.23.0", "build/vega-lite.min.js", "vega-lite.min.js",
     ["https://cdn.jsdelivr.net/npm/vega-lite@5", "https://cdn.jsdelivr.net/npm/vega-lite@5.2.0"]),
    ("vega-embed@6.29.0", "build/vega-embed.min.js", "vega-embed.min.js",
     ["https://cdn.jsdelivr.net/npm/vega-embed@6", "https://cdn.jsdelivr.net/npm/vega-embed@6.18.2"]),
    ("jquery@3.7.1", "dist/jquery.min.js", "jquery.min.js", ["https://code.jquery.com/jquery-3.7.1.min.js"]),
    ("popper.js@1.12.9", "dist/umd/popper.min.js", "popper.min.js",
     ["https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js"]),
    ("bootstrap@4.3.1", "dist/css/bootstrap.min.css", "bootstrap.min.css",
     ["https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"]),
    ("bootstrap@4.3.1", "dist/js/bootstrap.min.js", "bootstrap.min.js",
     ["https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js"]),
    ("bootstrap-table@1.19.1", "dist/bootstrap-table.min.css", "bootstrap-table.min.css",
     ["https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css"]),
    ("bootstrap-table@1.19.1", "dist/bootstrap-table.min.js", "bootstrap-table.min.js",
     ["https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js"]),
    ("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
     "bootstrap-table-filter-control.min.js",
     ["https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js"]),
    ("bootstrap-table@1.19.1", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
     "bootstrap-table-filter-control.min.css",
     ["https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
      "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css"]),
    ("bootstrap-datepicker@1.9.0", "dist/css/bootstrap-datepicker.min.css", "bootstrap-datepicker.min.css",
     ["https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css"]),
    ("bootstrap-datepicker@1.9.0", "dist/js/bootstrap-datepicker.min.js", "bootstrap-datepicker.min.js",
     ["https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js"]),
    ("@forevolve/bootstrap-dark@1.1.0", "dist/css/bootstrap-prefers-dark.min.css", "bootstrap-prefers-dark.min.css",
     ["https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css"]),
    # the stylesheet finds its fonts at ../webfonts/: keep that layout (woff2 only: every current browser reads it)
    ("@fortawesome/fontawesome-free@6.6.0", "css/all.min.css", "fontawesome/css/all.min.css",
     ["https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css"]),
    ("@fortawesome/fontawesome-free@6.6.0", "webfonts/fa-brands-400.woff2", "fontawesome/webfonts/fa-brands-400.woff2", []),
    ("@fortawesome/fontawesome-free@6.6.0", "webfonts/fa-regular-400.woff2", "fontawesome/webfonts/fa-regular-400.woff2",
     []),
    ("@fortawesome/fontawesome-free@6.6.0", "webfonts/fa-solid-900.woff2", "fontawesome/webfonts/fa-solid-900.woff2", []),
    ("@fortawesome/fontawesome-free@6.6.0", "webfonts/fa-v4compatibility.woff2",
     "fontawesome/webfonts/fa-v4compatibility.woff2", []),
]
LICENSE_NAMES = ("LICENSE", "LICENSE.txt", "LICENSE.md")


def _fetch(spec: str, into: Path) -> Path:
    """`npm pack` one package version and unpack it; the package folder."""
    out = subprocess.run(["npm", "pack", "--silent", spec], cwd=into, check=True, capture_output=True, text=True)
    tgz = into / out.stdout.strip().splitlines()[-1]
    target = into / tgz.stem
    with tarfile.open(tgz) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def main() -> int:
    if shutil.which("npm") is None:
        print("tools/vendor_assets.py needs npm on PATH", file=sys.stderr)
        return 2
    if VENDOR.exists():
        shutil.rmtree(VENDOR)
    (VENDOR / "licenses").mkdir(parents=True)
    sources, packages = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec, inner, name, urls in ASSETS:
            if spec not in packages:
                packages[spec] = _fetch(spec, Path(tmp))
                meta = json.loads((packages[spec] / "package.json").read_text())
                for lic in LICENSE_NAMES:
                    if (packages[spec] / lic).exists():
                        shutil.copy(packages[spec] / lic, VENDOR / "licenses" / f"{meta['name'].lstrip('@').replace('/', '__')}.txt")
                        break
            package = packages[spec]
            meta = json.loads((package / "package.json").read_text())
            target = VENDOR / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(package / inner, target)
            sources.append({"file": name, "package": meta["name"], "version": meta["version"], "path": inner,
                            "license": meta.get("license", ""), "urls": urls,
                            "sha256": hashlib.sha256(target.read_bytes()).hexdigest()})
    (VENDOR / "SOURCES.json").write_text(json.dumps({"assets": sources}, indent=1) + "\n")
    total = sum(p.stat().st_size for p in VENDOR.rglob("*") if p.is_file())
    print(f"{len(sources)} assets, {total / 1e6:.2f} MB in {VENDOR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
