"""Screenshot of the running app (Classify tab with a result) for the docs.

    python -m app.screenshot                         quick classifier on the default config (untrained SAE)
    python -m app.screenshot --model DIR_OR_URI      a real registered or pulled classifier

Needs Debian's `chromium` (scripts/install-system-deps.sh) and the `playwright` Python package; never
`playwright install`. The PNG is palette-quantised to stay small (the docs keep it under 300 KB).
"""
from __future__ import annotations

import argparse
import shutil
import socket
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def capture(url: str, image: Path, out: Path, width: int = 1280, max_bytes: int = 300_000) -> Path:
    """Upload `image` on the Classify tab, wait for the result, save a full-page screenshot to `out`."""
    from playwright.sync_api import expect, sync_playwright

    exe = shutil.which("chromium")
    if not exe:
        raise SystemExit("chromium not found: install Debian's chromium package (scripts/install-system-deps.sh)")
    raw = out.with_suffix(".raw.png")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.goto(url, wait_until="domcontentloaded")
            page.locator("#classify-input input[type=file]").set_input_files(str(image))
            expect(page.locator("#classify-sheet img")).to_be_visible(timeout=120_000)
            page.wait_for_timeout(1500)  # let the bar chart finish drawing
            page.screenshot(path=str(raw), full_page=True)
        finally:
            browser.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(raw).convert("RGB")
    for colours in (256, 128, 64):
        # UI screenshots are mostly flat colours: a palette keeps them sharp at a fraction of the size
        img.quantize(colours, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
        if out.stat().st_size <= max_bytes:
            break
    raw.unlink()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry URI or pulled directory (default: quick classifier)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    ap.add_argument("--image", type=Path, default=None, help="image to classify (default: an example)")
    ap.add_argument("--n-images", type=int, default=300, help="quick classifier: dataset images")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from revelio_svc.app.main import EXAMPLES_DIR, launch
    from revelio_svc.config import load_config

    note = ""
    if args.model:
        from revelio_svc.registry import load_classifier

        clf = load_classifier(args.model)
    else:
        from revelio_svc.app.quick import quick_classifier

        q = quick_classifier(load_config(None, []), n_images=args.n_images)
        clf = q.classifier
        note = f"Screenshot model: {q.backbone_note}; SAE not trained (app.quick)."
    image = args.image or min(EXAMPLES_DIR.glob("star_*.png"))
    demo = launch(clf, port=_free_port(), prevent_thread_lock=True, quiet=True, note=note)
    try:
        out = capture(demo.local_url, image, args.out)
    finally:
        demo.close()
    print(f"{out} ({out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
