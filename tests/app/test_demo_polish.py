"""Demo details: the deletion curve (legend, integer ticks, cleared when the image changes), the contribution
axis from 0, where the API examples' images are, typed JSON endpoints, integer sliders, a quiet CLI launch."""
from __future__ import annotations

import pandas as pd
import pytest

from revelio_svc.app import views
from revelio_svc.app.main import API_EXAMPLE_IMAGES, EXAMPLES_DIR, NO_DELETION, api_markdown, build_app

CURVE = {"prob": [0.9, 0.7, 0.4, 0.2], "prob_random": [0.9, 0.88, 0.87, 0.85]}


def test_deletion_curve_counts_whole_latents_and_its_legend_fits():
    df = views.deletion_frame(CURVE)
    # categories "0".."3" in order: no half-step ticks (a numeric axis of 0–3 puts ticks at 0.5)
    assert views.deletion_x_order(CURVE) == ["0", "1", "2", "3"]
    assert list(df["latents removed"][:4]) == ["0", "1", "2", "3"]
    import gradio as gr

    plotted = gr.LinePlot(x="latents removed", y="probability", color="order").postprocess(df)
    assert plotted.datatypes["latents removed"] == "nominal"  # one tick per whole count, in the given order
    assert set(df["order"]) == set(views.DELETION_ORDERS)
    assert all(len(label) <= 16 for label in views.DELETION_ORDERS)  # Vega-Lite truncates legend labels at 160 px


def test_contribution_axis_starts_at_zero():
    pos = pd.DataFrame({"contribution": [0.31, 0.29, 0.26]})
    assert views.contribution_y_lim(pos) == [0.0, None]
    neg = pd.DataFrame({"contribution": [0.3, -0.1]})
    assert views.contribution_y_lim(neg) == [-0.1, None]


def test_api_examples_say_where_the_example_images_are():
    md = api_markdown()
    assert "revelio_svc/app/examples" in md
    for var, name in API_EXAMPLE_IMAGES.items():
        assert (EXAMPLES_DIR / name).is_file()
        assert f'{var} = f"{{examples}}/{name}"' in md
    assert "star.png" not in md


@pytest.fixture(scope="module")
def svc(tiny_clf, tmp_path_factory):
    from revelio_svc.app.service import DemoService

    return DemoService(tiny_clf, fewshot_dir=tmp_path_factory.mktemp("fs"), browse_images=40, fewshot_eval=24)


@pytest.fixture(scope="module")
def app(tiny_clf, svc):
    return build_app(tiny_clf, service=svc)


def test_json_endpoints_and_integer_sliders_are_typed(app):
    api = app.get_api_info()["named_endpoints"]
    (info,) = api["/model_info"]["returns"]
    assert {"hook_point", "timestep", "backbone", "classes", "sae"} <= set(info["type"]["properties"])
    assert info["type"]["properties"]["timestep"] == {"type": "integer"}
    (exp,) = api["/explain_dataset_image"]["returns"]
    props = exp["type"]["properties"]
    assert {"label", "probs", "contributions", "model"} <= set(props)
    assert "latent" in props["contributions"]["items"]["properties"]
    ints = {"/classify": ["top_n"], "/deletion_curve": ["n_max"], "/steer": ["steps", "t_min", "t_max"], "/steer_class": ["latents_per_class", "steps", "t_min", "t_max"],
            "/fewshot_sample": ["n_per_class", "seed"]}
    for ep, names in ints.items():
        params = {p["parameter_name"]: p for p in api[ep]["parameters"]}
        for n in names:
            assert params[n]["type"]["type"] == "integer", (ep, n, params[n]["type"])


def _event(app, name: str):
    (fn,) = [f for f in app.fns.values() if getattr(f.fn, "__name__", "") == name]
    return fn


def test_an_atlas_click_clears_the_previous_deletion_curve(app, svc):
    import gradio as gr

    fn = _event(app, "on_atlas_click")
    out_ids = [c._id for c in fn.outputs]
    plot = [c for c in fn.outputs if isinstance(c, gr.LinePlot)]
    assert len(plot) == 1  # the deletion curve is among what an atlas click updates
    xy = svc.atlas("images")
    size, pad = views.ATLAS_SIZE, views.ATLAS_PAD
    px, py = (float(xy[0, 0]) * (size - 2 * pad) + pad, float(xy[0, 1]) * (size - 2 * pad) + pad)
    evt = gr.SelectData(None, {"index": [px, py], "value": None})
    res = fn.fn("images", evt)
    assert len(res) == len(out_ids)
    i = [c._id for c in fn.outputs].index(plot[0]._id)
    assert tuple(res[i:i + 3]) == NO_DELETION


def test_the_cli_demo_launches_quietly(tiny_model_dir, monkeypatch):
    """gradio's own start-up lines (`set share=True` …) are not printed to `revelio demo` users."""
    import revelio_svc.app.main
    from revelio_svc.app.serve import demo
    from revelio_svc.config import load_config

    calls = []
    monkeypatch.setattr(revelio_svc.app.main, "launch", lambda clf, **kw: calls.append(kw))
    monkeypatch.delenv("REVELIO_DEMO_USER", raising=False)
    monkeypatch.delenv("REVELIO_DEMO_PASSWORD", raising=False)
    assert demo(load_config(None, [f"demo.model={tiny_model_dir}"])) == 0
    assert calls[0]["quiet"] is True


def test_steering_toward_a_class_refuses_what_it_cannot_place(svc):
    from revelio_svc.app.service import InputError

    with pytest.raises(InputError, match="has no class 'dodecagon'; its classes: "):
        svc.steer_class("dodecagon")
    with pytest.raises(InputError, match="latents per class must be a whole number between 1 and 64"):
        svc.steer_class(svc.clf.class_names[0], per_class=0)
    with pytest.raises(InputError, match="timestep range is empty"):
        svc.steer_class(svc.clf.class_names[0], t_min=600, t_max=500)
