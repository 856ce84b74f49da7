"""For instructors: the course as a website (`make site`, scripts/build_site.py), built from the
stored notebooks without running them, then opened page by page in a real headless browser
(Debian's chromium, driven by playwright; `.ci/run` installs it)."""
import html.parser
import json
import shutil
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.imgs = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])


def _parse(path):
    p = _Links()
    p.feed(path.read_text(errors="replace"))
    return p


def _stored_pictures(nb_path):
    cells = json.loads(nb_path.read_text())["cells"]
    return sum("image/png" in o.get("data", {}) for c in cells for o in c.get("outputs", []))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "scripts"))
    import build_site

    out = tmp_path_factory.mktemp("site")
    t0 = time.perf_counter()
    build_site.build(out)
    return out, time.perf_counter() - t0


def test_the_site_builds_from_the_stored_notebooks_in_minutes(site):
    out, seconds = site
    assert (out / "index.html").exists() and (out / "search.html").exists()
    for nb in CHAPTERS:
        assert (out / "notebooks" / f"{nb.stem}.html").exists(), nb.stem
    assert seconds < 180, f"the site took {seconds:.0f} s to build"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_each_chapter_page_shows_every_stored_picture(site, nb):
    out, _ = site
    page = out / "notebooks" / f"{nb.stem}.html"
    imgs = [s for s in _parse(page).imgs if "_images/" in s or s.startswith("data:image")]
    assert len(imgs) >= _stored_pictures(nb)
    for src in imgs:
        if not src.startswith("data:"):
            assert (page.parent / src).resolve().exists(), src
    # the page offers its notebook for download, and the file is there
    offered = [h for h in _parse(page).hrefs if h.endswith(f"{nb.stem}.ipynb")]
    assert offered and (page.parent / offered[0]).resolve().exists()


def test_internal_links_resolve(site):
    out, _ = site
    broken = []
    for page in out.rglob("*.html"):
        if "_static" in page.parts:
            continue
        for href in _parse(page).hrefs:
            if href.startswith(("http:", "https:", "mailto:", "#", "javascript:")):
                continue
            target = href.split("#")[0].split("?")[0]
            if target and not (page.parent / target).resolve().exists():
                broken.append(f"{page.relative_to(out)} -> {href}")
    assert not broken, "\n".join(broken[:20])


@pytest.mark.skipif(not CHROMIUM, reason="needs Debian's chromium (`.ci/run` installs it)")
def test_every_chapter_page_loads_with_its_pictures_in_a_browser(site):
    from playwright.sync_api import sync_playwright

    out, _ = site
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page()
        # offline, like a reader without a network: only the site's own files load
        page.route("**/*", lambda r: r.continue_() if r.request.url.startswith("file:")
                   else r.abort())
        for nb in [None] + CHAPTERS:
            path = out / ("index.html" if nb is None else f"notebooks/{nb.stem}.html")
            page.goto(path.as_uri(), wait_until="load")
            shown = page.evaluate(
                "Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0)"
                ".length")
            want = 5 if nb is None else _stored_pictures(nb)   # the front page's five pictures
            assert shown >= want, f"{path.name}: {shown} pictures shown, {want} stored"
        browser.close()
