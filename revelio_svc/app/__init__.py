"""The Gradio demo: classify images with an SAE-latent explanation, a latent atlas and latent pages, causal
steering of the backbone with a latent, deletion curves, few-shot probes.

`build_app(classifier)` returns the gr.Blocks; `launch(...)` serves it. `revelio demo` (revelio_svc.demo)
loads a registered classifier and calls `launch`.
"""
from __future__ import annotations

__all__ = ["build_app", "launch"]


def __getattr__(name: str):
    # importing gradio takes seconds: only when the app is actually built
    if name in __all__:
        from . import main

        return getattr(main, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
