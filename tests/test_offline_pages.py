"""Pages open without internet: vendored assets are intact and pages load them instead of a CDN."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pipelines.offline_pages import VENDOR_DIR, localise_page, localise_site, remote_assets, vendored_urls

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.unit
def test_every_vendored_file_is_listed_and_matches_its_checksum():
    assets = json.loads((VENDOR_DIR / "SOURCES.json").read_text())["assets"]
    listed = {a["file"] for a in assets}
    on_disk = {p.relative_to(VENDOR_DIR).as_posix() for p in VENDOR_DIR.rglob("*")
               if p.is_file() and p.parent.name != "licenses" and p.name != "SOURCES.json"}
    assert listed == on_disk
    for asset in assets:
        assert hashlib.sha256((VENDOR_DIR / asset["file"]).read_bytes()).hexdigest() == asset["sha256"], asset["file"]
        assert asset["version"] and asset["license"], asset["file"]


@pytest.mark.unit
def test_a_page_with_cdn_assets_loads_them_locally_and_keeps_plain_links():
    page = ('<link rel="stylesheet" href="https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css"/>'
            '<script src="https://cdn.jsdelivr.net/npm/vega@5"></script>'
            '<script src="https://cdn.jsdelivr.net/npm/vega@5.20.2"></script>'
            '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png">'
            '<a href="https://greatexpectations.io">GX</a>'
            "<style>.x{background: url('https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/"
            "full_logo_dark.png') 0 0 no-repeat;}</style>")
    assert len(remote_assets(page)) == 5
    local = localise_page(page, "../static/vendor", "../static/images")
    assert remote_assets(local) == []
    assert '"../static/vendor/bootstrap.min.css"' in local
    assert local.count('"../static/vendor/vega.min.js"') == 2  # "vega@5" did not eat the front of "vega@5.20.2"
    assert '"../static/images/logo-long.png"' in local
    assert "url('../static/images/logo-long.png')" in local  # the dark logo GX does not ship: its own stands in
    assert 'href="https://greatexpectations.io"' in local  # a link a person follows is not an asset


@pytest.mark.unit
def test_a_site_gets_the_vendor_folder_and_relative_paths_per_depth(tmp_path):
    deep = tmp_path / "validations" / "suite" / "run"
    deep.mkdir(parents=True)
    (tmp_path / "static" / "images").mkdir(parents=True)
    (tmp_path / "static" / "images" / "logo-long.png").write_bytes(b"png")
    url = next(iter(vendored_urls()))
    for page in (tmp_path / "index.html", deep / "page.html"):
        page.write_text(f'<script src="{url}"></script><script src="https://example.org/new.js"></script>')
    assert localise_site(tmp_path) == ["https://example.org/new.js"]  # unknown assets are reported, not hidden
    for page in (tmp_path / "index.html", deep / "page.html"):
        ref = re.search(r'src="([^"]+)"', page.read_text()).group(1)
        assert not ref.startswith("http") and (page.parent / ref).is_file()


@pytest.mark.unit
def test_dvc_plots_show_writes_a_page_without_network_assets(tmp_path):
    dvc = shutil.which("dvc") or str(Path(os.sys.executable).parent / "dvc")
    proc = subprocess.run([dvc, "plots", "show", "-o", str(tmp_path / "dvc_plots")], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert "vegaEmbed" in page and remote_assets(page) == []
    scripts = re.findall(r'<script src="([^"]+)"', page)
    assert scripts and all(s.startswith("../pipelines/static/vendor/") for s in scripts)
    # resolved from the default output folder dvc_plots/ in the repository
    assert all((ROOT / "dvc_plots" / s).resolve().is_file() for s in scripts)
