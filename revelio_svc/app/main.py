"""The Gradio app: Classify, Latent atlas, Latent pages, Steering and Few-shot tabs on one loaded classifier.

API endpoints (gradio_client `api_name`s and their parameters), all behind one request queue:

    /classify(image, top_n, attribution, hide_dense)
                                             → label, notes, contribution bars, explanation sheet, JSON
    /deletion_curve(image, n_max)            → probability as the top latents are removed, summary, JSON
    /explain_dataset_image(index)            → the Classify outputs for dataset image `index`
    /atlas(view, colour_by)                  → 2-D map of the images or of the latents, legend, JSON
    /latent(latent)                          → a latent's page: summary, top images with heatmaps, histogram,
                                               purity per concept vs the control, co-firing latents, JSON
    /latent_search(concept, label)           → latents ranked by selectivity for a label
    /steer(latent, mode, strengths, seeds, sampler, steps, t_min, t_max)
                                             → the same seeds sampled with and without the latent, summary, JSON
    /fewshot_sample(dataset, concept, n_per_class, seed)   /fewshot_upload(name_1, images_1, …, name_4, images_4)
    /fewshot_classify(image)   /fewshot_save(name)   /fewshot_register(name, model_name)
    /model_info()                            → which model, version, backbone, hook point and timestep are served

Each has a runnable gradio_client example in `API_EXAMPLES` (the tests run them). A classification sends one
composite image (every latent's heatmap and top images in one sheet), not one file per tile: a client that
fetches the outputs makes one download per request. Clicking a sheet, an atlas point or a table row opens
what it shows (an image's explanation, a latent's page) through private events.

Bad input never shows a traceback: `InputError`s become a gr.Error with their message, anything else is
logged on the server and reported as a one-line internal error, and the app keeps serving.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
import typing
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from ..interpret.knn import ATLAS_POOLING
from . import views
from .api_types import Explanation, ModelInfo
from .service import (
    ATLAS_VIEWS,
    ATTRIBUTIONS,
    FEWSHOT_DATASETS,
    HIDE_DENSE,
    DemoService,
    FewShotProbe,
    InputError,
    int_in,
)

log = logging.getLogger("revelio.demo")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
N_UPLOAD_CLASSES = 4
AUTH_USER_ENV, AUTH_PASSWORD_ENV = "REVELIO_DEMO_USER", "REVELIO_DEMO_PASSWORD"
# what the deletion-curve outputs (plot, summary, JSON) show when the image changed since it was drawn
NO_DELETION = (None, "", None)
MODEL_CONCURRENCY_ID = "model"  # every event that runs the backbone shares one concurrency limit


def upload_path(payload) -> str | None:
    """The server-side path of an image upload, taken before any decoding.

    The events that take an uploaded image run with `preprocess=False`: gr.Image would otherwise open the
    upload with Pillow before our handler runs, so a non-image, a corrupt file or a decompression bomb would
    fail inside Gradio with a generic error. Here the handler gets the file and `service.decode_upload`
    checks size, format and colour mode with a message for each. (Gradio has still checked that the path
    lies in its upload cache.)
    """
    if payload is None:
        return None
    if isinstance(payload, (str, os.PathLike)):
        return str(payload)
    data = payload if isinstance(payload, dict) else (payload.model_dump() if hasattr(payload, "model_dump") else {})
    if data.get("path"):
        return str(data["path"])
    url = data.get("url") or ""
    if url.startswith("data:"):  # pasted images may arrive base64-encoded
        from gradio import processing_utils

        return processing_utils.save_base64_to_cache(url, gr.utils.get_upload_folder())
    raise InputError("no image data was received; upload the file again")


def _user_errors(what: str):
    """Turn InputError into a UI message and any other failure into a one-line error (logged in full)."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except InputError as e:
                # a user's input problem is not a server fault: no traceback in the server log
                raise gr.Error(str(e), title="Cannot use this input", print_exception=False) from None
            except Exception as e:  # noqa: BLE001 - the user gets one line, the log gets the traceback
                log.exception("%s failed", what)
                raise gr.Error(f"{what} failed: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                               ". The app is still running; try another input.", title="Error",
                               print_exception=False) from None  # logged above, once
        return wrapper

    return deco


def _evaluated(fn):
    """`fn` with its annotations evaluated: gr.api reads them with inspect.signature, and under
    `from __future__ import annotations` they are strings, which the API page would show as Any."""
    target = getattr(fn, "__func__", fn)
    target.__annotations__ = typing.get_type_hints(target)
    return fn


def _examples() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []


# runnable gradio_client examples, one per endpoint (tests/app/test_api.py runs every one against a served app);
# `star` and `circle` are image files (api_markdown says where the example images are)
API_EXAMPLES: dict[str, str] = {
    "classify": 'client.predict(handle_file(star), 6, api_name="/classify")',
    "deletion_curve": 'client.predict(handle_file(star), 16, api_name="/deletion_curve")',
    "explain_dataset_image": 'client.predict(0, api_name="/explain_dataset_image")',
    "atlas": 'client.predict("images", "shape", api_name="/atlas")',
    "latent": 'client.predict(3, api_name="/latent")',
    "latent_search": 'client.predict("shape", "star", api_name="/latent_search")',
    "steer": 'client.predict(3, "add", "1, 2, 4", "4", "ddim", 20, 0, 999, api_name="/steer")',
    "steer_class": 'client.predict("star", "4, 8, 16", 16, "4", "ddim", 20, 0, 999, api_name="/steer_class")',
    "fewshot_sample": 'client.predict("shapes", "shape", 5, 0, api_name="/fewshot_sample")',
    "fewshot_upload": ('client.predict("round", [handle_file(circle)], "pointy", [handle_file(star)], '
                       '"", None, "", None, api_name="/fewshot_upload")'),
    "fewshot_classify": 'client.predict(handle_file(star), api_name="/fewshot_classify")',
    "fewshot_save": 'client.predict("my-fewshot-probe", api_name="/fewshot_save")',
    "fewshot_register": 'client.predict("my-probe", "revelio-fewshot", api_name="/fewshot_register")',
    "model_info": 'client.predict(api_name="/model_info")',
}
# the example images the API examples name: shipped in the package (the Classify tab shows them too)
API_EXAMPLE_IMAGES = {"star": "star_green_13.png", "circle": "circle_cyan_5.png"}


def api_markdown() -> str:
    """The API section of the page: every endpoint with its gradio_client call."""
    lines = ["Every action is an API endpoint (see “Use via API” at the bottom of the page). With "
             "`pip install gradio_client`:", "", "```python", "from gradio_client import Client, handle_file",
             'client = Client("http://127.0.0.1:7860/")',
             "# example images: the Classify tab's examples, shipped with revelio in revelio_svc/app/examples/",
             "# (python -c \"import revelio_svc.app as a, pathlib; "
             "print(pathlib.Path(a.__file__).parent / 'examples')\");",
             "# any PNG or JPEG file works",
             'examples = "revelio_svc/app/examples"',
             *(f'{k} = f"{{examples}}/{v}"' for k, v in API_EXAMPLE_IMAGES.items())]
    lines += [API_EXAMPLES[k] for k in API_EXAMPLES]
    lines += ["```"]
    return "\n".join(lines)


def build_app(classifier, *, service: DemoService | None = None, note: str = "", concurrency: int = 2,
              examples: list[str] | None = None, warm: bool = False, **service_kw: Any) -> gr.Blocks:
    """The demo's gr.Blocks for `classifier` (a revelio_svc.inference.classifier.Classifier).

    `service_kw` go to `DemoService` (max_pixels, top, n_top_images, browse_images, fewshot_dir,
    allow_register, cache_dir, atlas_method, ...). `note` is shown under the model description (e.g.
    "random weights"). `warm` computes the dataset statistics and both atlases in the background right
    away, so the first visitor of those tabs does not wait for them.
    """
    svc = service or DemoService(classifier, **service_kw)
    if warm:
        threading.Thread(target=_warm, args=(svc,), name="revelio-demo-warm", daemon=True).start()
    return DemoUI(svc, note=note, concurrency=concurrency,
                  examples=_examples() if examples is None else examples).build()


class DemoUI:
    """The page: one method per tab, the handlers next to the tab that uses them."""

    OUT = ("label", "notes", "bars", "sheet", "json")  # what a classification fills

    def __init__(self, svc: DemoService, *, note: str = "", concurrency: int = 2, examples: list[str] = ()):
        self.svc = svc
        self.info = svc.info
        self.note = note
        self.examples = list(examples)
        self.model_events = {"concurrency_limit": int(concurrency), "concurrency_id": MODEL_CONCURRENCY_ID}
        self.concepts = svc.concepts()

    def build(self) -> gr.Blocks:
        # delete_cache: uploads and rendered results older than an hour are removed hourly, so a demo that
        # runs for weeks does not fill the disk
        with gr.Blocks(title="Revelio — diffusion features, explained", delete_cache=(3600, 3600)) as demo:
            gr.Markdown("# Revelio demo\nA diffusion model's activations, decomposed by a sparse autoencoder "
                        "into latents, classified by a linear probe on those latents.")
            gr.Markdown(views.model_markdown(self.info, self.note), elem_id="model-info")
            gr.api(_evaluated(self.model_info), api_name="model_info")
            with gr.Tabs() as self.tabs:
                with gr.Tab("Classify", id="classify"):
                    self._classify_tab()
                with gr.Tab("Latent atlas", id="atlas"):
                    self._atlas_tab()
                with gr.Tab("Latent pages", id="latents"):
                    self._latent_tab()
                with gr.Tab("Steering", id="steer"):
                    self._steer_tab()
                with gr.Tab("Few-shot", id="fewshot"):
                    self._fewshot_tab()
            with gr.Accordion("API: gradio_client examples", open=False):
                gr.Markdown(api_markdown())
            self._wire_links(demo)
        return demo

    def model_info(self) -> ModelInfo:
        """The model the app serves: registry name, version, alias, backbone, hook point, timestep, SAE, classes."""
        return self.info  # type: ignore[return-value]

    # ------------------------------------------------------------------ Classify
    def _explain_outputs(self, exp: dict[str, Any], top_n: int | None = None):
        for n in exp.get("input", {}).get("notes", []):
            gr.Warning(n, title="Input resized" if n.startswith("resized from") else "Input converted")
        df = views.contribution_frame(exp)
        bars = gr.BarPlot(value=df, x="latent", y="contribution", sort=list(df["latent"]),
                          y_lim=views.contribution_y_lim(df))
        try:
            sheet, _ = views.explanation_sheet(exp, self.svc.thumb, self.svc.n_top_images, self.svc.clf.top_values)
        except InputError as e:  # the prediction stands even when the dataset cannot be shown
            gr.Warning(str(e))
            sheet, _ = views.explanation_sheet({**exp, "contributions": [{**r, "top_images": []}
                                                                         for r in exp["contributions"]]},
                                               self.svc.thumb, 0, self.svc.clf.top_values)
        js = views.explanation_json(exp, self.info)
        return (views.probs_for_label(exp), views.input_notes_markdown(exp), bars, sheet, js)

    def _classify(self, image, top_n: int = 6, attribution: str = "contrastive", hide_dense: bool = HIDE_DENSE):
        svc = self.svc
        top = int_in(top_n, "top_n", 1, 12)
        path = upload_path(image)
        return self._explain_outputs(svc.explain(path, top=top, attribution=attribution, hide_dense=hide_dense))

    def _classify_tab(self) -> None:
        out = self.c_out = _classify_view("classify", self.svc.n_top_images)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                self.c_in = gr.Image(label="Image", type="filepath", format="png", height=260,
                                     sources=["upload", "clipboard"], elem_id="classify-input")
                self.c_top = gr.Slider(1, 12, value=self.svc.top, step=1, precision=0, label="Top n latents")
                # contrastive: share of the margin over the runner-up class (dense latents cancel); logit: plain share
                self.c_attr = gr.Radio(list(ATTRIBUTIONS), value="contrastive", label="Attribution",
                                       elem_id="classify-attribution")
                self.c_hide = gr.Checkbox(value=HIDE_DENSE, label="Hide dense latents (firing on > 50 % of images)",
                                          elem_id="classify-hide-dense")
                btn = gr.Button("Classify", variant="primary", elem_id="classify-button")
                if self.examples:
                    gr.Examples(examples=self.examples, inputs=self.c_in, label="Examples (from the shapes data)",
                                examples_per_page=12)
            with gr.Column(scale=2):
                out["label"].render()
                out["notes"].render()
                out["bars"].render()
        gr.Markdown("Each row is one latent: where it fires in your image, then the dataset images it fires on "
                    "most. Click a row to open that latent's page.")
        out["sheet"].render()
        with gr.Accordion("Deletion curve: remove the top latents and classify again", open=False):
            with gr.Row():
                n_max = gr.Slider(1, 32, value=16, step=1, precision=0, label="Latents to remove")
                d_btn = gr.Button("Remove them one by one", elem_id="deletion-button")
            d_md = gr.Markdown(label="Summary", elem_id="deletion-summary")
            d_plot = gr.LinePlot(x="latents removed", y="probability", color="order", height=260,
                                 label="Deletion curve plot", title="Probability of the predicted class",
                                 y_lim=[0, 1], **views.DELETION_PLOT)
            d_json = gr.JSON(label="Deletion curve", visible=False)
        # a new image (upload, atlas click, top image) makes the deletion curve of the previous one stale
        self.d_outs = [d_plot, d_md, d_json]
        with gr.Accordion("Explanation as JSON", open=False):
            out["json"].render()
        outs = [out[k] for k in self.OUT]
        classify = _user_errors("Classification")(self._classify)
        # preprocess=False: the handler decodes the upload itself (see upload_path)
        ins = [self.c_in, self.c_top, self.c_attr, self.c_hide]
        btn.click(classify, ins, outs, api_name="classify", preprocess=False, **self.model_events)

        def classify_on_upload(image, top_n, attribution, hide_dense):
            if image is None:  # the user cleared the input: nothing to explain, nothing to complain about
                return None, "", None, None, None, *NO_DELETION
            return (*classify(image, top_n, attribution, hide_dense), *NO_DELETION)

        self.c_in.upload(classify_on_upload, ins, outs + self.d_outs, api_visibility="private", preprocess=False,
                         **self.model_events)

        @_user_errors("Deletion curve")
        def deletion_curve(image, n_max):
            curve = self.svc.deletion(upload_path(image), n_max)
            plot = gr.LinePlot(value=views.deletion_frame(curve), sort=views.deletion_x_order(curve))
            return plot, views.deletion_markdown(curve), curve

        d_btn.click(deletion_curve, [self.c_in, n_max], [d_plot, d_md, d_json], api_name="deletion_curve",
                    preprocess=False, **self.model_events)
        # an API route for explaining a dataset image by index (what an atlas click does)

        @_user_errors("Explaining a dataset image")
        def explain_dataset_image(index):
            return self._explain_outputs(self.svc.explain_dataset_image(index))

        self.explain_index = explain_dataset_image

        def explain_dataset_image_json(index: int) -> Explanation:
            """The Classify explanation (JSON) of dataset image `index`, with its training-time noise."""
            return explain_dataset_image(index)[4]

        gr.api(_evaluated(explain_dataset_image_json), api_name="explain_dataset_image")

    # ------------------------------------------------------------------ Latent atlas
    def _atlas_tab(self) -> None:
        gr.Markdown("A map of the dataset's images placed by which SAE latents fire on them, or of the latents "
                    "themselves placed by their decoder directions (t-SNE). Every point is drawn. Click a point: "
                    "an image opens its explanation on the Classify tab, a latent opens its page.")
        with gr.Row():
            self.a_view = gr.Radio(list(ATLAS_VIEWS), value="images", label="Map of", elem_id="atlas-view")
            first = self.svc.colour_options("images")
            self.a_colour = gr.Dropdown(first, value=first[0] if first else None, label="Colour by",
                                        allow_custom_value=True, elem_id="atlas-colour")
            a_btn = gr.Button("Draw", variant="primary", elem_id="atlas-button")
        self.a_img = gr.Image(label="Atlas", interactive=False, format="png", height=600,
                              buttons=["download", "fullscreen"], elem_id="atlas-plot")
        self.a_md = gr.Markdown(label="Legend", elem_id="atlas-legend")
        self.a_json = gr.JSON(label="Atlas", visible=False)
        atlas = _user_errors("Atlas")(self._atlas)
        self.atlas_fn = atlas
        a_btn.click(atlas, [self.a_view, self.a_colour], [self.a_img, self.a_md, self.a_json], api_name="atlas",
                    **self.model_events)

        def colours_for(view):
            opts = self.svc.colour_options(view)
            return gr.Dropdown(choices=opts, value=opts[0] if opts else None)

        self.a_view.change(colours_for, self.a_view, self.a_colour, api_visibility="private").then(
            atlas, [self.a_view, self.a_colour], [self.a_img, self.a_md, self.a_json], api_visibility="private",
            **self.model_events)
        self.a_colour.input(atlas, [self.a_view, self.a_colour], [self.a_img, self.a_md, self.a_json],
                            api_visibility="private", **self.model_events)

    def _atlas(self, view: str, colour_by: str):
        svc = self.svc
        xy = svc.atlas(view)
        values, title = svc.atlas_values(view, colour_by)
        if isinstance(values, np.ndarray):
            colours, legend = views.continuous_colours(values), None
        else:
            colours, legend = views.categorical_colours(values)
        order = np.random.default_rng(0).permutation(len(xy))  # no class is always drawn on top
        img = views.render_atlas(xy[order], colours[order])
        what = (f"{len(xy):,} images" + (f" (a seeded sample of the dataset's {svc.dataset_latents().n_dataset:,})"
                                        if svc.dataset_latents().n < svc.dataset_latents().n_dataset else "")
                if view == "images" else f"{len(xy):,} latents")
        md = (views.legend_markdown(legend, title) if legend is not None else f"**Colour**: {title}")
        md += f"  \n{what}, every one drawn; embedding ({svc.atlas_method}) computed once per model and cached."
        if view == "images" and svc.dataset_latents().Z_atlas is not None:
            md += f" Images are placed by their latents {ATLAS_POOLING}-pooled over positions."
        out = {"view": view, "colour_by": colour_by, "n_points": int(len(xy)), "method": svc.atlas_method}
        if view == "images" and colour_by in svc.concepts():
            knn = svc.atlas_knn(colour_by)
            md += (f"  \nHow well the map carries **{colour_by}**: {int(knn['k'])}-nearest-neighbour accuracy "
                   f"{knn['knn_codes']:.2f} in the latent codes, {knn['knn_layout']:.2f} in this layout "
                   f"(chance {knn['chance']:.2f}).")
            out["knn"] = knn
        return img, md, out

    # ------------------------------------------------------------------ Latent pages
    def _latent_tab(self) -> None:
        svc = self.svc
        gr.Markdown("One latent: where it fires most, how often and how strongly, how pure its top images are "
                    "per concept next to a random control, the probe weights it feeds and the latents that fire "
                    "with it. Click a top image to explain it, a co-firing latent to open it.")
        with gr.Row():
            self.l_num = gr.Number(value=None, precision=0, minimum=0, maximum=svc.clf.n_latents - 1,
                                   label=f"Latent (0–{svc.clf.n_latents - 1})", elem_id="latent-number")
            l_btn = gr.Button("Show latent", variant="primary", elem_id="latent-button")
        self.l_md = gr.Markdown(label="Summary", elem_id="latent-summary")
        self.l_sheet = gr.Image(label="Top images", interactive=False,
                                format="jpeg", buttons=["download", "fullscreen"], elem_id="latent-top-images")
        with gr.Row():
            self.l_hist = gr.BarPlot(x="activation", y="images", height=220, label="Activation histogram",
                                     title="Activation histogram (images where it fires)",
                                     elem_id="latent-histogram")
            self.l_cofire = gr.Dataframe(label="Co-firing latents", interactive=False,
                                         elem_id="latent-cofire")
        self.l_concepts = gr.Dataframe(label="Purity per concept",
                                       interactive=False, elem_id="latent-concepts")
        self.l_json = gr.JSON(label="Latent statistics", visible=False)
        self.l_outs = [self.l_md, self.l_sheet, self.l_hist, self.l_cofire, self.l_concepts, self.l_json]
        latent = _user_errors("Latent page")(self._latent)
        self.latent_fn = latent
        l_btn.click(latent, self.l_num, self.l_outs, api_name="latent", **self.model_events)
        first = svc.clf.concept if svc.clf.concept in self.concepts else next(iter(self.concepts), None)
        with gr.Accordion("Find latents for a label", open=False):
            with gr.Row():
                # label choices follow the concept (per session); API callers may ask for any of them
                s_concept = gr.Dropdown(list(self.concepts), value=first, label="Concept", allow_custom_value=True)
                labels = self.concepts.get(first, []) if first else []
                s_label = gr.Dropdown(labels, value=labels[0] if labels else None, label="Label",
                                      allow_custom_value=True)
                s_btn = gr.Button("Find latents for this label")
            self.l_table = gr.Dataframe(label="Latents for the label", interactive=False)

        def labels_for(concept):
            names = self.concepts.get(concept, [])
            return gr.Dropdown(choices=names, value=names[0] if names else None)

        @_user_errors("Latent search")
        def latent_search(concept, label):
            return views.search_frame(svc.search_latents(concept, label))

        s_concept.change(labels_for, s_concept, s_label, api_visibility="private")
        s_btn.click(latent_search, [s_concept, s_label], self.l_table, api_name="latent_search", **self.model_events)

    def _latent(self, latent):
        svc = self.svc
        if latent is None:
            raise InputError(f"enter a latent number between 0 and {svc.clf.n_latents - 1}")
        st = svc.latent_page(latent)
        imgs, maps = svc.latent_maps_of(st["latent"], st["top_images"])
        labels = [f"#{i} {lab}" for i, lab in zip(st["top_images"], st["top_labels"] or [""] * len(imgs))]
        sheet, _ = views.latent_sheet(st, imgs, maps, labels)
        return (views.latent_page_markdown(st), sheet, views.histogram_frame(st), views.cofire_frame(st),
                views.concept_frame(st), st)

    # ------------------------------------------------------------------ Steering
    def _steer_tab(self) -> None:
        svc = self.svc
        gr.Markdown(f"Sample images from the backbone (`{self.info['backbone']}`) with the same seeds, with and "
                    f"without a latent: its decoder direction is added (× its strongest dataset activation × α) "
                    f"or the latent is zeroed at the SAE's hook point `{svc.clf.hook_point}`, for denoising "
                    "timesteps in the range. Differences between a row and the baseline are caused by the latent.")
        with gr.Row():
            self.st_latent = gr.Number(value=None, precision=0, minimum=0, maximum=svc.clf.n_latents - 1,
                                       label="Latent", elem_id="steer-latent")
            st_mode = gr.Radio(["add", "ablate"], value="add", label="Mode (add α × direction, or zero the latent)")
            st_strengths = gr.Textbox("1, 2, 4", label="Strengths α (add)", elem_id="steer-strengths")
            st_seeds = gr.Textbox("4", label="Seeds (a count, or a list like 0, 5, 9)")
        with gr.Row():
            st_sampler = gr.Radio(["ddim", "ddpm"], value="ddim", label="Sampler")
            st_steps = gr.Slider(2, 100, value=20, step=1, precision=0, label="Steps")
            st_tmin = gr.Slider(0, 999, value=0, step=1, precision=0, label="t min (steer from)")
            st_tmax = gr.Slider(0, 999, value=999, step=1, precision=0, label="t max (steer to)")
            st_btn = gr.Button("Sample", variant="primary", elem_id="steer-button")
        st_img = gr.Image(label="Steering samples", interactive=False, format="jpeg",
                          buttons=["download", "fullscreen"], elem_id="steer-images")
        st_md = gr.Markdown(label="Summary", elem_id="steer-summary")
        st_json = gr.JSON(label="Steering run", visible=False)

        @_user_errors("Steering")
        def steer(latent, mode, strengths, seeds, sampler, steps, t_min, t_max, progress=gr.Progress()):
            if latent is None:
                raise InputError(f"enter a latent number between 0 and {svc.clf.n_latents - 1}")
            progress(0, desc="sampling")
            res = svc.steer(latent, mode, strengths, seeds, sampler, steps, t_min, t_max,
                            progress=lambda d, t: progress(d / max(t, 1), desc=f"denoising step {d}/{t}"))
            img, _ = views.steering_sheet(res.images, res.variants, res.seeds)
            summ = res.summary()
            md = (f"Latent **{summ['latent']}**, {summ['mode']}, {summ['sampler']} {summ['steps']} steps, steered at "
                  f"{summ['steered_steps']} of them (t ∈ [{summ['t_range'][0]}, {summ['t_range'][1]}]) · "
                  f"{summ['seconds']:.1f} s · mean |pixel change| vs baseline: "
                  + ", ".join(f"{c:.1f}" for c in summ["mean_abs_change"][1:]))
            judged = svc.judge_steering(res.images)
            if judged is not None:
                summ["judge"] = judged
                md += ("\n\n**Shape judge** (a classifier trained only on renders; `?`: its top probability is "
                       "below 0.5, the sample is out of its distribution):\n\n| variant | verdict per seed | judged |\n"
                       "|---|---|---|\n" + "\n".join(f"| {v} | {', '.join(j['verdicts'])} | {j['in_dist']:.0%} |"
                                                     for v, j in zip(res.variants, judged)))
            return img, md, summ

        st_btn.click(steer, [self.st_latent, st_mode, st_strengths, st_seeds, st_sampler, st_steps, st_tmin, st_tmax],
                     [st_img, st_md, st_json], api_name="steer", **self.model_events)

        gr.Markdown("**Steer toward a class**: a class's most selective latents added where one dataset image of "
                    "the class has them (each position gets that image's own codes × α), beside random "
                    "directions placed by the same codes and scaled to the same norm at every position (the "
                    "control). The seeds, sampler, steps and timestep range above apply.")
        with gr.Row():
            sc_class = gr.Dropdown(list(svc.clf.class_names), value=svc.clf.class_names[0],
                                   label=f"Class ({svc.clf.concept})", elem_id="steer-class")
            sc_strengths = gr.Textbox("4, 8, 16", label="Strengths α", elem_id="steer-class-strengths")
            sc_m = gr.Number(value=16, precision=0, minimum=1, maximum=64, label="Latents of the class")
            sc_btn = gr.Button("Steer toward class", elem_id="steer-class-button")

        @_user_errors("Steering toward a class")
        def steer_class(label, strengths, latents_per_class, seeds, sampler, steps, t_min, t_max,
                        progress=gr.Progress()):
            progress(0, desc="sampling")
            res, ex = svc.steer_class(label, strengths, seeds, latents_per_class, sampler, steps, t_min, t_max,
                                      progress=lambda d, t: progress(d / max(t, 1), desc=f"denoising step {d}/{t}"))
            img, _ = views.steering_sheet(res.images, res.variants, res.seeds)
            summ = {**res.summary(), "exemplar": ex}
            md = (f"Class **{ex['class']}**: latents {', '.join(map(str, ex['latents']))} placed as dataset image "
                  f"#{ex['image_index']} has them · {summ['sampler']} {summ['steps']} steps, steered at "
                  f"{summ['steered_steps']} · {summ['seconds']:.1f} s")
            judged = svc.judge_steering(res.images)
            if judged is not None:
                summ["judge"] = judged
                md += ("\n\n**Shape judge** (`?`: top probability below 0.5, out of its distribution):\n\n"
                       "| variant | verdict per seed | judged |\n|---|---|---|\n"
                       + "\n".join(f"| {v} | {', '.join(j['verdicts'])} | {j['in_dist']:.0%} |"
                                   for v, j in zip(res.variants, judged)))
            return img, md, summ

        sc_btn.click(steer_class, [sc_class, sc_strengths, sc_m, st_seeds, st_sampler, st_steps, st_tmin, st_tmax],
                     [st_img, st_md, st_json], api_name="steer_class", **self.model_events)

    # ------------------------------------------------------------------ Few-shot
    def _fewshot_tab(self) -> None:
        svc = self.svc
        fs_state = gr.State(None)
        gr.Markdown("Train a linear probe on the SAE latents from a handful of labelled images, in seconds, then "
                    "classify new images with it. The backbone and SAE stay the same.")
        with gr.Tabs():
            with gr.Tab("Sample from a built-in dataset"):
                with gr.Row():
                    f_ds = gr.Dropdown(list(FEWSHOT_DATASETS), value="shapes", label="Dataset")
                    f_concept = gr.Dropdown(["shape", "colour", "size", "background", "position"], value="shape",
                                            label="Concept to predict",
                                            # choices follow the dataset; the service checks the value
                                            allow_custom_value=True)
                    f_n = gr.Slider(1, 50, value=5, step=1, precision=0, label="Images per class")
                    f_seed = gr.Number(0, precision=0, label="Seed")
                f_sample_btn = gr.Button("Sample and train", variant="primary")
            with gr.Tab("Upload labelled images"):
                up_inputs = []
                for i in range(N_UPLOAD_CLASSES):
                    with gr.Row():
                        up_inputs.append(gr.Textbox(label=f"Class {i + 1} name", scale=1))
                        up_inputs.append(gr.File(label=f"Class {i + 1} images", file_count="multiple",
                                                 type="filepath", scale=3, height=120))
                f_upload_btn = gr.Button("Train on these images", variant="primary")
        f_status = gr.Markdown(label="Status")
        f_gallery = gr.Gallery(label="Training images", columns=12, height=180, object_fit="contain")
        f_summary = gr.JSON(label="Few-shot probe", visible=False)
        fs_outs = [fs_state, f_status, f_gallery, f_summary]

        def fewshot_outputs(fs: FewShotProbe):
            summary = fs.summary()
            return fs, views.fewshot_markdown(summary), [(im, lab) for im, lab in fs.examples], summary

        @_user_errors("Few-shot training")
        def fewshot_sample(dataset, concept, n_per_class, seed):
            return fewshot_outputs(svc.fewshot_from_dataset(dataset, concept, int(n_per_class), int(seed or 0)))

        @_user_errors("Few-shot training")
        def fewshot_upload(name_1, images_1, name_2, images_2, name_3, images_3, name_4, images_4):
            pairs = [(name_1, _paths(images_1)), (name_2, _paths(images_2)), (name_3, _paths(images_3)),
                     (name_4, _paths(images_4))]
            fs = svc.fewshot_from_uploads(pairs)
            for s in fs.skipped:
                gr.Warning(s, title="File skipped")
            return fewshot_outputs(fs)

        def fewshot_concepts(dataset):
            ds = svc._fewshot_dataset(dataset) if dataset in FEWSHOT_DATASETS else None
            names = [c.name for c in ds.concepts] if ds is not None else []
            return gr.Dropdown(choices=names, value=names[0] if names else None)

        f_ds.change(fewshot_concepts, f_ds, f_concept, api_visibility="private")
        f_sample_btn.click(fewshot_sample, [f_ds, f_concept, f_n, f_seed], fs_outs, api_name="fewshot_sample",
                           **self.model_events)
        f_upload_btn.click(fewshot_upload, up_inputs, fs_outs, api_name="fewshot_upload", **self.model_events)

        gr.Markdown("### Classify with the few-shot probe")
        out = _classify_view("fewshot", svc.n_top_images)
        with gr.Row():
            with gr.Column(scale=1, min_width=260):
                f_in = gr.Image(label="Image", type="filepath", format="png", height=220,
                                sources=["upload", "clipboard"])
                f_btn = gr.Button("Classify with few-shot probe", variant="primary")
                if self.examples:
                    gr.Examples(examples=self.examples, inputs=f_in, examples_per_page=12)
            with gr.Column(scale=2):
                out["label"].render()
                out["notes"].render()
                out["bars"].render()
        out["sheet"].render()
        with gr.Accordion("Explanation as JSON", open=False):
            out["json"].render()

        @_user_errors("Few-shot classification")
        def fewshot_classify(image, fs):
            if fs is None:
                raise InputError("train a few-shot probe first (sample from a dataset or upload labelled images)")
            return self._explain_outputs(svc.explain(upload_path(image), clf=svc.classifier_with(fs)))

        f_btn.click(fewshot_classify, [f_in, fs_state], [out[k] for k in self.OUT], api_name="fewshot_classify",
                    preprocess=False, **self.model_events)
        self._fewshot_save(fs_state)

    def _fewshot_save(self, fs_state) -> None:
        svc = self.svc
        with gr.Accordion("Save or register the few-shot probe", open=False):
            with gr.Row():
                s_name = gr.Textbox(label="Name (a folder under the demo's few-shot directory)",
                                    value="my-fewshot-probe")
                s_model = gr.Textbox(label="Registered model name", value="revelio-fewshot",
                                     interactive=svc.allow_register)
            with gr.Row():
                s_btn = gr.Button("Save")
                r_btn = gr.Button("Register in MLflow", interactive=svc.allow_register)
            s_msg = gr.Markdown(label="Message")
            s_path = gr.Textbox(label="Saved to", visible=False)
            r_json = gr.JSON(label="Registration", visible=False)

        @_user_errors("Saving")
        def fewshot_save(name, fs):
            dest = svc.save_fewshot(fs, name)
            return (f"Saved to `{dest}`. Serve it with `revelio demo --model {dest}`.", str(dest))

        @_user_errors("Registering")
        def fewshot_register(name, model_name, fs):
            reg = svc.register_fewshot(fs, name, model_name)
            msg = (f"Registered `{reg['name']}` version {reg['version']} (saved at `{reg['saved_to']}`); "
                   f"champion: {'this version' if reg.get('champion') else 'unchanged'} ({reg.get('reason', '')}).")
            return msg, reg

        s_btn.click(fewshot_save, [s_name, fs_state], [s_msg, s_path], api_name="fewshot_save")
        r_btn.click(fewshot_register, [s_name, s_model, fs_state], [s_msg, r_json], api_name="fewshot_register")

    # ------------------------------------------------------------------ links between tabs
    def _wire_links(self, demo: gr.Blocks) -> None:
        """Clicks that open another tab (private events), and what the tabs show when the page opens."""
        svc = self.svc
        c_outs = [self.c_out[k] for k in self.OUT]
        private = {"api_visibility": "private", **self.model_events}

        def open_image(index):
            outs = self.explain_index(index)
            return (svc.thumb(int(index)), *outs, *NO_DELETION, gr.Tabs(selected="classify"))

        def open_latent(j):
            return (j, j, *self.latent_fn(j), gr.Tabs(selected="latents"))

        image_outs = [self.c_in, *c_outs, *self.d_outs, self.tabs]
        latent_outs = [self.l_num, self.st_latent, *self.l_outs, self.tabs]

        def atlas_click(view, evt: gr.SelectData):
            x, y = views.atlas_coords(*evt.index[:2])
            hit = svc.pick(view, x, y)
            if hit is None:
                raise InputError("no point there: click closer to a point")
            return hit

        def on_atlas_click(view, evt: gr.SelectData):
            try:
                hit = atlas_click(view, evt)
            except InputError as e:
                gr.Info(str(e))
                return [gr.skip()] * (len(latent_outs) + len(image_outs) - 1)
            if view == "images":
                return [gr.skip(), gr.skip(), *[gr.skip()] * len(self.l_outs), *open_image(hit)]
            return [*open_latent(hit)[:-1], *[gr.skip()] * (len(image_outs) - 1), gr.Tabs(selected="latents")]

        both = [self.l_num, self.st_latent, *self.l_outs, *image_outs]
        self.a_img.select(_user_errors("Opening a point")(on_atlas_click), self.a_view, both, **private)

        def on_sheet_click(evt: gr.SelectData, exp):
            rows = (exp or {}).get("contributions") or []
            cell = views.Sheet(len(rows), svc.n_top_images + 1, views.THUMB).cell(*evt.index[:2])
            if cell is None or cell[0] >= len(rows):
                return [gr.skip()] * len(latent_outs)
            return open_latent(rows[cell[0]]["latent"])

        self.c_out["sheet"].select(_user_errors("Opening a latent")(on_sheet_click), self.c_out["json"], latent_outs,
                                   **private)

        def on_top_click(evt: gr.SelectData, st):
            tops = (st or {}).get("top_images") or []
            cell = views.Sheet(max(1, -(-len(tops) // 6)), 6, 96).cell(*evt.index[:2])
            k = None if cell is None else cell[0] * 6 + cell[1]
            if k is None or k >= len(tops):
                return [gr.skip()] * len(image_outs)
            return open_image(tops[k])

        self.l_sheet.select(_user_errors("Opening an image")(on_top_click), self.l_json, image_outs, **private)

        def on_row(evt: gr.SelectData, table):
            try:
                row = evt.index[0] if isinstance(evt.index, (list, tuple)) else int(evt.index)
                return open_latent(int(table.iloc[row]["latent"]))
            except (IndexError, KeyError, ValueError, TypeError):  # a click on an empty table selects nothing
                return [gr.skip()] * len(latent_outs)

        for table in (self.l_cofire, self.l_table):
            table.select(_user_errors("Opening a latent")(on_row), table, latent_outs, **private)

        def on_load():
            """The pages open on something useful: the atlas drawn, a live and pure latent shown."""
            j = svc.useful_latent()
            try:
                atlas = self.atlas_fn("images", (svc.colour_options("images") or [None])[0])
            except gr.Error as e:  # e.g. the model's dataset is not on this machine: say so in place
                atlas = (None, f"The atlas is not available: {e.message}", None)
            try:
                page = self.latent_fn(j)
            except gr.Error as e:
                page = (f"Latent pages are not available: {e.message}", None, None, None, None, None)
            return (*atlas, j, j, *page)

        demo.load(on_load, None, [self.a_img, self.a_md, self.a_json, self.l_num, self.st_latent, *self.l_outs],
                  **private)


def _warm(svc: DemoService) -> None:
    try:
        svc.latent_table()
        for view in ATLAS_VIEWS:
            svc.atlas(view)
    except Exception:  # noqa: BLE001 - the tabs report the same problem when they are used
        log.warning("could not precompute the dataset statistics and atlases", exc_info=True)


def _classify_view(prefix: str, n_top: int) -> dict[str, Any]:
    """The output components of a classification (created unrendered, placed by the caller)."""
    return {
        "label": gr.Label(num_top_classes=6, label="Prediction", render=False, elem_id=f"{prefix}-label"),
        "notes": gr.Markdown(label="Notes", render=False, elem_id=f"{prefix}-notes"),
        "bars": gr.BarPlot(x="latent", y="contribution", title="Top latents: contribution to the predicted class",
                           x_title="latent", y_title="share of the prediction", height=260, render=False, y_lim=[0, None],
                           label="Contributions", tooltip=["latent", "contribution", "activation", "weight",
                                                           "density", "selectivity", "dense"]),
        # one image: per latent a row with its heatmap on the input, then its top-activating dataset images;
        # JPEG: encoding it takes ~2 ms where PNG takes ~60 ms, a fifth of the round-trip budget
        "sheet": gr.Image(label="Explanation sheet", interactive=False, format="jpeg", render=False,
                          buttons=["download", "fullscreen"], elem_id=f"{prefix}-sheet"),
        "json": gr.JSON(label="Explanation", render=False),
    }


def _paths(files) -> list[str]:
    if not files:
        return []
    if isinstance(files, (str, os.PathLike)):
        return [str(files)]
    return [str(getattr(f, "name", f) if not isinstance(f, dict) else f.get("path")) for f in files]


# --------------------------------------------------------------------------- serving
def auth_from_env(environ: os._Environ | dict | None = None) -> tuple[str, str] | None:
    """(user, password) from REVELIO_DEMO_USER / REVELIO_DEMO_PASSWORD; None when neither is set."""
    env = os.environ if environ is None else environ
    user, pw = env.get(AUTH_USER_ENV, ""), env.get(AUTH_PASSWORD_ENV, "")
    if not user and not pw:
        return None
    if not user or not pw:
        missing = AUTH_PASSWORD_ENV if user else AUTH_USER_ENV
        raise ValueError(f"basic auth needs both {AUTH_USER_ENV} and {AUTH_PASSWORD_ENV}; {missing} is not set")
    return user, pw


def launch(classifier, *, host: str = "127.0.0.1", port: int = 7860, auth: tuple[str, str] | None = None,
           concurrency: int = 2, max_queue: int = 64, max_file_size: str | int = "25mb",
           prevent_thread_lock: bool = False, quiet: bool = False, note: str = "", **build_kw: Any) -> gr.Blocks:
    """Build and serve the app. Binds 127.0.0.1 unless `host` says otherwise.

    `concurrency` events run at once (the rest wait in a queue of at most `max_queue`), so many users do not
    hold many images and activations in memory together. Returns the running Blocks (call `.close()`).
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    warm = bool(build_kw.pop("warm", False))
    examples = build_kw.pop("examples", None)
    svc = build_kw.pop("service", None) or DemoService(classifier, **build_kw)
    demo = build_app(classifier, service=svc, concurrency=concurrency, note=note, examples=examples)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    if host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        log.warning("serving on %s without a login: anyone who can reach this address can use the demo "
                    "(set %s and %s to require one)", host, AUTH_USER_ENV, AUTH_PASSWORD_ENV)
    demo.launch(server_name=host, server_port=int(port), auth=auth, prevent_thread_lock=True,
                show_error=False, quiet=quiet, max_file_size=max_file_size, share=False,
                allowed_paths=[str(EXAMPLES_DIR)], ssr_mode=False)
    if warm:  # only once the port is ours: a start that fails leaves no computation running at exit (which
        # aborts the interpreter, exit code 134 instead of 1)
        threading.Thread(target=_warm, args=(svc,), name="revelio-demo-warm", daemon=True).start()
    if not prevent_thread_lock:
        demo.block_thread()
    return demo
