"""The app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright for Python.

Never `playwright install`: the system Chromium is used through `executable_path`.
"""
from __future__ import annotations

import shutil

import pytest

from .helpers import example

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


@pytest.mark.browser
def test_upload_shows_label_heatmaps_and_latent_gallery(served, tiny_clf, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    exe = shutil.which("chromium")
    assert exe, "the browser test needs Debian's chromium package (scripts/install-system-deps.sh installs it)"
    url = served[0]
    path = example("star")
    expected = tiny_clf.class_names[int(tiny_clf.predict([str(path)])[0].argmax())]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url, wait_until="domcontentloaded")
            expect(page.locator("#model-info")).to_contain_text("up_blocks.1", timeout=60_000)
            page.locator("#classify-input input[type=file]").set_input_files(str(path))
            label = page.locator("#classify-label")
            expect(label).to_contain_text(expected, timeout=60_000)
            gallery = page.locator("#classify-top-images img")
            expect(gallery.first).to_be_visible(timeout=60_000)
            expect(page.locator("#classify-heatmaps img").first).to_be_visible(timeout=60_000)
            assert gallery.count() >= 1
            shot = tmp_path / "classify.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one
