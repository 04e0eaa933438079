"""The app in a real browser: headless Chromium (Debian's `chromium`) driven by Playwright for Python.

Never `playwright install`: the system Chromium is used through `executable_path`.

Two models: the default one (the shipped backbone `builtin:shapes-unet` on the default config, SAE untrained,
`app.quick`) and a classifier on an image-folder dataset (data.source=imagefolder) registered in MLflow and
served from the registry. On each: classify an upload, open an atlas point (an image → its explanation on the
Classify tab; a latent → its page), read a latent page, run a steering sample. Screenshots of every step go to
`test-artifacts/browser/` in the repository root (git-ignored; CI keeps it as an artifact); the test prints
the folder.
"""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest

from .conftest import free_port
from .helpers import example

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "browser"


@pytest.fixture(scope="module")
def default_app(tmp_path_factory):
    from revelio_svc.app.main import launch
    from revelio_svc.app.quick import quick_classifier
    from revelio_svc.config import load_config

    out = tmp_path_factory.mktemp("default_out")
    q = quick_classifier(load_config(None, ["backbone.device=cpu", f"output_dir={out}"]), n_images=120)
    demo = launch(q.classifier, port=free_port(), prevent_thread_lock=True, quiet=True, browse_images=120,
                  cache_dir=out / "cache", note=q.backbone_note)
    try:
        yield demo.local_url, q.classifier
    finally:
        demo.close()


@pytest.fixture(scope="module")
def folder_app(tiny_unet_dir, tmp_path_factory):
    """A classifier on a folder of images (one sub-folder per class), registered and served from the registry."""
    import mlflow
    from PIL import Image

    from revelio_svc.app.main import launch
    from revelio_svc.app.quick import quick_classifier
    from revelio_svc.config import load_config
    from revelio_svc.data import ShapesDataset
    from revelio_svc.registry import load_classifier, register_model

    root = tmp_path_factory.mktemp("folder_data")
    ds = ShapesDataset(n=36, image_size=32, seed=5)
    names = ds.concept("shape").classes
    for i, lab in enumerate(ds.labels("shape")):
        d = root / names[int(lab)]
        d.mkdir(exist_ok=True)
        Image.fromarray(ds.image(i)).save(d / f"img{i:03d}.png")
    out = tmp_path_factory.mktemp("folder_out")
    cfg = load_config(None, ["data.source=imagefolder", f"data.id={root}", "data.image_size=16",
                             f"backbone.id={tiny_unet_dir}", "backbone.device=cpu", "sae.hook_point=up_blocks.1",
                             "probe.concept=label", f"output_dir={out}"])
    model_dir = out / "classifier"
    quick_classifier(cfg, n_latents=32, k=4, top_n=8).classifier.save(model_dir)
    from tests.registry.helpers import isolate_mlflow_env, reset_mlflow_experiment

    with pytest.MonkeyPatch.context() as mp:
        # a fresh store, whatever experiment or run an earlier test left in the environment
        isolate_mlflow_env(mp, f"sqlite:///{out / 'mlflow.db'}")
        reset_mlflow_experiment()
        mp.chdir(out)
        with mlflow.start_run():
            reg = register_model("classifier", model_dir, {"accuracy": 0.5})
        clf = load_classifier(f"{reg.name}/{reg.version}")
        demo = launch(clf, port=free_port(), prevent_thread_lock=True, quiet=True, cache_dir=out / "cache")
        try:
            yield demo.local_url, clf
        finally:
            demo.close()
            while mlflow.active_run() is not None:
                mlflow.end_run()
            reset_mlflow_experiment()


def _click_natural(img, x: float, y: float) -> None:
    """Click an <img> at natural-pixel (x, y), with the object-fit: contain geometry Gradio maps clicks by."""
    box = img.bounding_box()
    nw, nh = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
    r = min(box["width"] / nw, box["height"] / nh, 1)
    img.click(position={"x": (box["width"] - nw * r) / 2 + x * r, "y": (box["height"] - nh * r) / 2 + y * r})


def _a_point(page, img) -> tuple[int, int]:
    """Natural-pixel coordinates of a drawn atlas point (a non-white pixel of the image being shown)."""
    from PIL import Image

    arr = np.asarray(Image.open(io.BytesIO(page.request.get(img.get_attribute("src")).body())).convert("RGB"))
    ys, xs = np.nonzero((arr < 235).any(-1) & (arr.max(-1) > 40))  # coloured, neither background nor ring
    k = len(xs) // 2
    return int(xs[k]), int(ys[k])


def _shot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    p = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(p), full_page=True)
    return p


def _walk(url: str, clf, name: str) -> list[Path]:
    from playwright.sync_api import expect, sync_playwright

    exe = shutil.which("chromium")
    assert exe, "the browser test needs Debian's chromium package (scripts/install-system-deps.sh installs it)"
    path = example("star")
    expected = clf.class_names[int(clf.predict([str(path)])[0].argmax())]
    shots = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1100})
            page.goto(url, wait_until="domcontentloaded")
            expect(page.locator("#model-info")).to_contain_text(clf.hook_point, timeout=60_000)
            # Classify: one upload → label, notes and one explanation sheet
            page.locator("#classify-input input[type=file]").set_input_files(str(path))
            expect(page.locator("#classify-label")).to_contain_text(expected, timeout=60_000)
            expect(page.locator("#classify-sheet img")).to_be_visible(timeout=60_000)
            shots.append(_shot(page, f"{name}-1-classify"))

            # Atlas of images: click a point → that dataset image is explained on the Classify tab
            page.get_by_role("tab", name="Latent atlas").click()
            atlas = page.locator("#atlas-plot img")
            expect(atlas).to_be_visible(timeout=120_000)
            expect(page.locator("#atlas-legend")).to_contain_text("every one drawn", timeout=60_000)
            shots.append(_shot(page, f"{name}-2-atlas-images"))
            _click_natural(atlas, *_a_point(page, atlas))
            expect(page.get_by_role("tab", name="Classify")).to_have_attribute("aria-selected", "true",
                                                                               timeout=60_000)
            expect(page.locator("#classify-notes")).to_contain_text("dataset image #", timeout=60_000)
            shots.append(_shot(page, f"{name}-3-atlas-point-explained"))

            # Atlas of latents: click a point → that latent's page
            page.get_by_role("tab", name="Latent atlas").click()
            page.locator("#atlas-view").get_by_text("latents", exact=True).click()
            expect(page.locator("#atlas-legend")).to_contain_text("latents, every one drawn", timeout=60_000)
            page.wait_for_timeout(500)  # the new image replaces the old one
            _click_natural(atlas, *_a_point(page, atlas))
            expect(page.get_by_role("tab", name="Latent pages")).to_have_attribute("aria-selected", "true",
                                                                                   timeout=60_000)
            # Latent page: summary, top images with heatmaps, purity next to the control, co-firing latents
            summary = page.locator("#latent-summary")
            expect(summary).to_contain_text("Latent ", timeout=60_000)
            expect(summary).to_contain_text("Dissection IoU")
            expect(page.locator("#latent-concepts")).to_contain_text("control purity")
            expect(page.locator("#latent-top-images img")).to_be_visible(timeout=60_000)
            shots.append(_shot(page, f"{name}-4-latent-page"))

            # links: a top image → its explanation; a row of the explanation sheet → that latent's page
            from revelio_svc.app.views import CAPTION, THUMB

            _click_natural(page.locator("#latent-top-images img"), 20, CAPTION + 20)
            expect(page.get_by_role("tab", name="Classify")).to_have_attribute("aria-selected", "true",
                                                                               timeout=60_000)
            expect(page.locator("#classify-notes")).to_contain_text("dataset image #", timeout=60_000)
            first = page.locator("#classify-sheet img")
            expect(first).to_be_visible(timeout=60_000)
            page.wait_for_timeout(500)
            _click_natural(first, THUMB // 2, CAPTION + THUMB // 2)
            expect(page.get_by_role("tab", name="Latent pages")).to_have_attribute("aria-selected", "true",
                                                                                   timeout=60_000)
            expect(page.locator("#latent-summary")).to_contain_text("Latent ", timeout=60_000)

            # Steering: the latent the page opened on, few steps so the test stays short
            page.get_by_role("tab", name="Steering").click()
            steps = page.get_by_label("Steps").first
            steps.fill("6")
            steps.press("Enter")
            page.locator("#steer-button").click()
            expect(page.locator("#steer-summary")).to_contain_text("steered at", timeout=120_000)
            expect(page.locator("#steer-images img")).to_be_visible(timeout=60_000)
            shots.append(_shot(page, f"{name}-5-steering"))
        finally:
            browser.close()
    print(f"browser screenshots: {ARTIFACTS}")
    return shots


@pytest.mark.browser
def test_default_model_classify_atlas_latent_page_and_steering(default_app):
    url, clf = default_app
    for shot in _walk(url, clf, "default"):
        assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


@pytest.mark.browser
def test_imagefolder_model_from_the_registry(folder_app):
    url, clf = folder_app
    assert clf.data.source == "imagefolder" and clf.source.get("version") == "1"
    for shot in _walk(url, clf, "imagefolder"):
        assert shot.stat().st_size > 10_000
