"""A tiny classifier (tiny random UNet, untrained SAE, probe fitted on 40 shapes) and the app served on it."""
from __future__ import annotations

import socket

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_app_cfg(tiny_unet_dir, tmp_path_factory):
    from revelio_svc.config import load_config

    out = tmp_path_factory.mktemp("app_out")
    return load_config(None, [
        "data.source=shapes", "data.n_images=40", "data.image_size=16", f"backbone.id={tiny_unet_dir}",
        "backbone.device=cpu", "sae.hook_point=up_blocks.1", "sae.timestep=10", "probe.concept=shape",
        f"output_dir={out}",
    ])


@pytest.fixture(scope="session")
def tiny_model_dir(tiny_app_cfg, tmp_path_factory):
    """The tiny classifier saved like a pulled model directory (what `revelio demo --model DIR` serves)."""
    from revelio_svc.app.quick import quick_classifier

    q = quick_classifier(tiny_app_cfg, n_latents=32, k=4, top_n=8)
    d = tmp_path_factory.mktemp("tiny_classifier")
    q.classifier.save(d)
    return d


@pytest.fixture(scope="session")
def tiny_clf(tiny_model_dir):
    from revelio_svc.registry import load_classifier

    return load_classifier(str(tiny_model_dir))


MAX_PIXELS = 250_000  # low, so a "too large" upload is small enough to make in a test


@pytest.fixture(scope="session")
def served(tiny_clf, tmp_path_factory):
    """The app on a free loopback port; yields (url, Blocks, few-shot directory)."""
    from revelio_svc.app.main import launch

    fewshot_dir = tmp_path_factory.mktemp("fewshot")
    demo = launch(tiny_clf, port=free_port(), prevent_thread_lock=True, quiet=True, max_pixels=MAX_PIXELS,
                  fewshot_dir=fewshot_dir, browse_images=40, fewshot_eval=24, allow_register=True)
    try:
        yield demo.local_url, demo, fewshot_dir
    finally:
        demo.close()


@pytest.fixture()
def client(served):
    from gradio_client import Client

    return Client(served[0], verbose=False)
