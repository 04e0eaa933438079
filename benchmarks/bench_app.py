"""Latency of the demo's Classify action on the default models, on CPU: p50 / p95 over repeated requests.

Measurements of the same action (upload a 96 px PNG, get label + attribution + heatmaps + top images):

- handler: what the app's Python does per request: decode the file (`service.decode_upload`), run
  `Classifier.explain` (backbone forward to the hook point, SAE, probe, heatmaps), look up the top images'
  labels and render the explanation sheet (`app.views`). Target p50 <= 300 ms.
- http: the same through the served app with gradio_client, without fetching the output files.
- http_with_files: the same with gradio_client fetching every output file (its default): what a client
  that shows the result pays. Target p50 <= 300 ms.
- steering: `DemoService.steer`, 4 seeds × 3 strengths with DDIM 20 steps on the hook point, the first run
  (baseline sampled too) and later runs (baseline cached). Target <= 10 s.

Models: `--model` (a registry URI or pulled directory) when given; otherwise `app.quick.quick_classifier` on the
default config — the shipped backbone `builtin:shapes-unet` when it is installed, else the default architecture
with RANDOM weights (the output says which) — with the default SAE size (expansion 8, k=32) untrained, which
costs the same as a trained one. Images differ per request (the examples, cycled), so nothing is cached.

Run: `python benchmarks/bench_app.py` (`--quick` for a short smoke run; `--threads N` torch threads, default 1).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_P50_MS = 300.0
TARGET_STEER_S = 10.0


def _steering(svc, repeats: int) -> dict:
    """`svc.steer` on the latent the browser opens on: 4 seeds × 3 strengths (+ the baseline), DDIM 20 steps."""
    j = int(svc.clf.top_values[:, 0].argmax())
    svc._baselines.clear()
    t = time.perf_counter()
    svc.steer(j, "add", "1, 2, 4", 4, "ddim", 20, 0, 999)
    first = time.perf_counter() - t
    cached = []
    for r in range(repeats):
        t = time.perf_counter()
        svc.steer((j + 1 + r) % svc.clf.n_latents, "add", "1, 2, 4", 4, "ddim", 20, 0, 999)
        cached.append(time.perf_counter() - t)
    return {"first_s": round(first, 2), "cached_median_s": round(statistics.median(cached), 2) if cached else None}


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(_pct(ms, 0.95), 1),
            "mean_ms": round(statistics.fmean(ms), 1), "max_ms": round(max(ms), 1)}


def _count_files(out) -> int:
    """Local files in a gradio_client result (each one was a separate download)."""
    if isinstance(out, str):
        return int(os.path.isfile(out))
    if isinstance(out, dict):
        return sum(_count_files(v) for v in out.values())
    if isinstance(out, (list, tuple)):
        return sum(_count_files(v) for v in out)
    return 0


def _inputs(n: int, size: int = 96) -> list[Path]:
    """n distinct PNG uploads from the shapes generator (a seed no config trains on)."""
    from PIL import Image

    from revelio_svc.data import ShapesDataset

    d = Path(tempfile.mkdtemp(prefix="revelio-bench-app-"))
    ds = ShapesDataset(n=n, image_size=size, seed=777)
    paths = []
    for i in range(n):
        p = d / f"img{i}.png"
        Image.fromarray(ds.image(i)).save(p)
        paths.append(p)
    return paths


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry URI or pulled directory (default: quick classifier)")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    ap.add_argument("--n-images", type=int, default=400, help="quick classifier: dataset images for the probe")
    ap.add_argument("--no-http", action="store_true", help="skip the end-to-end HTTP measurement")
    ap.add_argument("--no-steer", action="store_true", help="skip the steering measurement")
    ap.add_argument("--steer-repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="short smoke run")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.warmup, args.n_images = 12, 2, 120

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(args.threads)
    from revelio_svc.app import views
    from revelio_svc.app.service import DemoService
    from revelio_svc.config import load_config

    t0 = time.perf_counter()
    if args.model:
        from revelio_svc.registry import load_classifier

        clf = load_classifier(args.model)
        models = f"{args.model} (backbone {clf.backbone_cfg.id})"
    else:
        from revelio_svc.app.quick import quick_classifier

        q = quick_classifier(load_config(None, []), n_images=args.n_images)
        clf = q.classifier
        models = f"quick classifier on the default config; backbone: {q.backbone_note}"
    setup_s = time.perf_counter() - t0
    svc = DemoService(clf)
    sf = clf.sae.config
    print(f"models: {models}")
    print(f"hook point {clf.hook_point}, t={clf.timestep}, {clf.data.image_size} px, SAE {sf.n_latents} latents "
          f"k={sf.k} on {sf.input}; torch threads {args.threads}; setup {setup_s:.1f} s")

    paths = _inputs(args.requests + args.warmup)

    def handler(p: Path) -> None:
        exp = svc.explain(str(p))
        views.explanation_sheet(exp, svc.thumb, svc.n_top_images, clf.top_values)
        views.contribution_frame(exp)

    for p in paths[:args.warmup]:
        handler(p)
    ms = []
    for p in paths[args.warmup:]:
        t = time.perf_counter()
        handler(p)
        ms.append((time.perf_counter() - t) * 1000)
    res = {"models": models, "threads": args.threads, "handler": _summary(ms)}
    # the model part alone, for reference: explain on an already decoded image
    rgb = [svc.explain(str(p))["rgb"] for p in paths[:args.warmup]]
    ms_model = []
    for i in range(args.requests):
        t = time.perf_counter()
        clf.explain(rgb[i % len(rgb)], top=svc.top, n_images=svc.n_top_images)
        ms_model.append((time.perf_counter() - t) * 1000)
    res["explain_only"] = _summary(ms_model)

    if not args.no_http:
        from gradio_client import Client, handle_file

        from revelio_svc.app.main import launch

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo = launch(clf, port=port, prevent_thread_lock=True, quiet=True)
        try:
                # download_files=False: the server's answer alone; cf: what a client that wants every output image
            # pays (gradio_client fetches each file it is given). The two alternate request by request, so both
            # see the same load from whatever else runs on the machine.
            c = Client(demo.local_url, verbose=False, download_files=False)
            cf = Client(demo.local_url, verbose=False, download_files=tempfile.mkdtemp(prefix="revelio-bench-dl-"))
            for p in paths[:args.warmup]:
                c.predict(handle_file(str(p)), 6, api_name="/classify")
                cf.predict(handle_file(str(p)), 6, api_name="/classify")
            ms_http, ms_fetch, n_files = [], [], 0
            for p in paths[args.warmup:]:
                t = time.perf_counter()
                c.predict(handle_file(str(p)), 6, api_name="/classify")
                ms_http.append((time.perf_counter() - t) * 1000)
                t = time.perf_counter()
                out = cf.predict(handle_file(str(p)), 6, api_name="/classify")
                ms_fetch.append((time.perf_counter() - t) * 1000)
                n_files = _count_files(out)
            res["http"] = _summary(ms_http)
            res["http_with_files"] = {**_summary(ms_fetch), "files_per_response": n_files}
        finally:
            demo.close()

    if not args.no_steer:
        res["steering"] = _steering(svc, args.steer_repeats)
    for k in ("handler", "explain_only", "http", "http_with_files"):
        if k in res:
            r = res[k]
            print(f"{k:>15}: p50 {r['p50_ms']:7.1f} ms   p95 {r['p95_ms']:7.1f} ms   (n={r['n']}, max {r['max_ms']} ms)"
                  + (f", {r['files_per_response']} file(s) per response" if "files_per_response" in r else ""))
    if "steering" in res:
        st = res["steering"]
        print(f"       steering: 4 seeds × 3 strengths, DDIM 20 steps: first run {st['first_s']:.2f} s (baseline "
              f"sampled too), then median {st['cached_median_s']:.2f} s (baseline cached)")
    ok = res["handler"]["p50_ms"] <= TARGET_P50_MS
    if "http_with_files" in res:
        ok = ok and res["http_with_files"]["p50_ms"] <= TARGET_P50_MS
    if "steering" in res:
        ok = ok and res["steering"]["first_s"] <= TARGET_STEER_S
    print(f"targets: handler and round trip with files p50 <= {TARGET_P50_MS:.0f} ms, steering <= "
          f"{TARGET_STEER_S:.0f} s: {'met' if ok else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
