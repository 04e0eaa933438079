"""The Gradio app: Classify, Few-shot and Latent browser tabs on one loaded classifier.

API endpoints (gradio_client `api_name`s), all behind one request queue:

    /classify          image → label, notes, contribution bars, heatmaps, top images, explanation JSON
    /fewshot_sample    dataset, concept, n per class, seed → status, training images, summary JSON
    /fewshot_upload    4 × (class name, files) → status, training images, summary JSON
    /fewshot_classify  image → the Classify outputs, with the session's few-shot probe
    /fewshot_save      name → message, saved path;  /fewshot_register  name, model name → message, JSON
    /latent            latent id → markdown, top images, label distribution, report JSON
    /latent_search     concept, label → table of latents ranked by selectivity
    /model_info        → which model, version, backbone, hook point and timestep are served

Bad input never shows a traceback: `InputError`s become a gr.Error with their message, anything else is
logged on the server and reported as a one-line internal error, and the app keeps serving.
"""
from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from . import views
from .service import FEWSHOT_DATASETS, DemoService, FewShotProbe, InputError

log = logging.getLogger("revelio.demo")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
N_UPLOAD_CLASSES = 4
AUTH_USER_ENV, AUTH_PASSWORD_ENV = "REVELIO_DEMO_USER", "REVELIO_DEMO_PASSWORD"
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


def _examples() -> list[str]:
    return sorted(str(p) for p in EXAMPLES_DIR.glob("*.png")) if EXAMPLES_DIR.is_dir() else []


def build_app(classifier, *, service: DemoService | None = None, note: str = "", concurrency: int = 2,
              examples: list[str] | None = None, warm: bool = False, **service_kw: Any) -> gr.Blocks:
    """The demo's gr.Blocks for `classifier` (a revelio_svc.inference.classifier.Classifier).

    `service_kw` go to `DemoService` (max_pixels, top, n_top_images, browse_images, fewshot_dir,
    allow_register, ...). `note` is shown under the model description (e.g. "random weights").
    `warm` computes the latent browser's dataset statistics in the background right away, so the first
    visitor of that tab does not wait for them.
    """
    svc = service or DemoService(classifier, **service_kw)
    if warm:
        threading.Thread(target=_warm, args=(svc,), name="revelio-demo-warm", daemon=True).start()
    info = svc.info
    examples = _examples() if examples is None else examples
    model_events = {"concurrency_limit": int(concurrency), "concurrency_id": MODEL_CONCURRENCY_ID}

    # ------------------------------------------------------------------ handlers
    def _explain_outputs(exp: dict[str, Any]):
        for n in exp.get("input", {}).get("notes", []):
            gr.Warning(n, title="Input converted")
        df = views.contribution_frame(exp)
        bars = gr.BarPlot(value=df, x="latent", y="contribution", sort=list(df["latent"]))
        return (views.probs_for_label(exp), views.input_notes_markdown(exp), bars,
                views.heatmap_items(exp, svc.clf.top_values), _top_items(exp),
                views.explanation_json(exp, info))

    def _top_items(exp):
        try:
            return views.top_image_items(exp, svc.thumb, svc.n_top_images, svc.clf.top_values)
        except InputError as e:  # the prediction stands even when the dataset cannot be shown
            gr.Warning(str(e))
            return []

    @_user_errors("Classification")
    def classify(image):
        return _explain_outputs(svc.explain(upload_path(image)))

    def classify_on_upload(image):
        if image is None:  # the user cleared the input: nothing to explain, nothing to complain about
            return None, "", None, [], [], None
        return classify(image)

    @_user_errors("Few-shot training")
    def fewshot_sample(dataset, concept, n, seed):
        fs = svc.fewshot_from_dataset(dataset, concept, int(n), int(seed or 0))
        return _fewshot_outputs(fs)

    @_user_errors("Few-shot training")
    def fewshot_upload(*args):
        pairs = [(args[2 * i], _paths(args[2 * i + 1])) for i in range(N_UPLOAD_CLASSES)]
        fs = svc.fewshot_from_uploads(pairs)
        for s in fs.skipped:
            gr.Warning(s, title="File skipped")
        return _fewshot_outputs(fs)

    def _fewshot_outputs(fs: FewShotProbe):
        summary = fs.summary()
        return fs, views.fewshot_markdown(summary), [(im, lab) for im, lab in fs.examples], summary

    @_user_errors("Few-shot classification")
    def fewshot_classify(image, fs):
        if fs is None:
            raise InputError("train a few-shot probe first (sample from a dataset or upload labelled images)")
        return _explain_outputs(svc.explain(upload_path(image), clf=svc.classifier_with(fs)))

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

    @_user_errors("Latent browser")
    def latent(j):
        if j is None:
            raise InputError(f"enter a latent number between 0 and {svc.clf.n_latents - 1}")
        rep = svc.latent_report(j)
        items = []
        for i, v in zip(rep["top_images"], rep["top_values"]):
            labs = [f"{c}={_label_of(c, i)}" for c in svc.concepts()][:3]
            items.append((views.strip([svc.thumb(i)], size=96), f"#{i} · {v:.2f} · {', '.join(labs)}"))
        return (views.latent_markdown(rep), items, views.label_distribution_frame(rep), rep)

    def _label_of(concept, i):
        names, lab = svc.dataset_labels()[concept]
        return names[int(lab[i])]

    @_user_errors("Latent search")
    def latent_search(concept, label):
        return views.search_frame(svc.search_latents(concept, label))

    def pick_from_table(evt: gr.SelectData, table):
        try:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else int(evt.index)
            return int(table.iloc[row]["latent"])
        except Exception:  # noqa: BLE001 - a click on an empty table selects nothing
            return gr.skip()

    def fewshot_concepts(dataset):
        ds = svc._fewshot_dataset(dataset) if dataset in FEWSHOT_DATASETS else None
        names = [c.name for c in ds.concepts] if ds is not None else []
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def labels_for(concept):
        names = svc.concepts().get(concept, [])
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def first_live_latent() -> int:
        live = [j for j in range(svc.clf.n_latents) if svc.clf.top_indices[j, 0] >= 0]
        return live[0] if live else 0

    # ------------------------------------------------------------------ layout
    concepts = svc.concepts()
    first_concept = svc.clf.concept if svc.clf.concept in concepts else (next(iter(concepts), None))
    # delete_cache: uploads and rendered results older than an hour are removed hourly, so a demo that runs
    # for weeks does not fill the disk
    with gr.Blocks(title="Revelio — diffusion features, explained", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Revelio demo\nA diffusion model's activations, decomposed by a sparse autoencoder into "
                    "latents, classified by a linear probe on those latents.")
        gr.Markdown(views.model_markdown(info, note), elem_id="model-info")
        def model_info() -> dict:
            return info

        gr.api(model_info, api_name="model_info")

        with gr.Tabs():
            with gr.Tab("Classify", id="classify"):
                c_out = _classify_view("classify", svc.n_top_images)
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        c_in = gr.Image(label="Image", type="filepath", format="png", height=260,
                                        sources=["upload", "clipboard"], elem_id="classify-input")
                        c_btn = gr.Button("Classify", variant="primary", elem_id="classify-button")
                        if examples:
                            gr.Examples(examples=examples, inputs=c_in, label="Examples (from the shapes data)",
                                        examples_per_page=12)
                    with gr.Column(scale=2):
                        c_out["label"].render()
                        c_out["notes"].render()
                        c_out["bars"].render()
                c_out["heat"].render()
                c_out["tops"].render()
                with gr.Accordion("Explanation as JSON", open=False):
                    c_out["json"].render()
                outs = [c_out[k] for k in ("label", "notes", "bars", "heat", "tops", "json")]
                # preprocess=False: the handler decodes the upload itself (see upload_path)
                c_btn.click(classify, c_in, outs, api_name="classify", preprocess=False, **model_events)
                c_in.upload(classify_on_upload, c_in, outs, api_visibility="private", preprocess=False,
                            **model_events)

            with gr.Tab("Few-shot", id="fewshot"):
                fs_state = gr.State(None)
                gr.Markdown("Train a linear probe on the SAE latents from a handful of labelled images, in "
                            "seconds, then classify new images with it. The backbone and SAE stay the same.")
                with gr.Tabs():
                    with gr.Tab("Sample from a built-in dataset"):
                        with gr.Row():
                            f_ds = gr.Dropdown(list(FEWSHOT_DATASETS), value="shapes", label="Dataset")
                            f_concept = gr.Dropdown(["shape", "colour", "size", "background", "position"],
                                                    value="shape", label="Concept to predict",
                                                    # choices follow the dataset; the service checks the value
                                                    allow_custom_value=True)
                            f_n = gr.Slider(1, 50, value=5, step=1, label="Images per class")
                            f_seed = gr.Number(0, precision=0, label="Seed")
                        f_sample_btn = gr.Button("Sample and train", variant="primary")
                    with gr.Tab("Upload labelled images"):
                        up_inputs = []
                        for i in range(N_UPLOAD_CLASSES):
                            with gr.Row():
                                name = gr.Textbox(label=f"Class {i + 1} name", scale=1)
                                files = gr.File(label=f"Class {i + 1} images", file_count="multiple",
                                                type="filepath", scale=3, height=120)
                            up_inputs += [name, files]
                        f_upload_btn = gr.Button("Train on these images", variant="primary")
                f_status = gr.Markdown()
                f_gallery = gr.Gallery(label="Training images", columns=12, height=180, object_fit="contain")
                f_summary = gr.JSON(visible=False)
                f_ds.change(fewshot_concepts, f_ds, f_concept, api_visibility="private")
                f_sample_btn.click(fewshot_sample, [f_ds, f_concept, f_n, f_seed],
                                   [fs_state, f_status, f_gallery, f_summary], api_name="fewshot_sample",
                                   **model_events)
                f_upload_btn.click(fewshot_upload, up_inputs, [fs_state, f_status, f_gallery, f_summary],
                                   api_name="fewshot_upload", **model_events)

                gr.Markdown("### Classify with the few-shot probe")
                f_out = _classify_view("fewshot", svc.n_top_images)
                with gr.Row():
                    with gr.Column(scale=1, min_width=260):
                        f_in = gr.Image(label="Image", type="filepath", format="png", height=220,
                                        sources=["upload", "clipboard"])
                        f_btn = gr.Button("Classify with few-shot probe", variant="primary")
                        if examples:
                            gr.Examples(examples=examples, inputs=f_in, examples_per_page=12)
                    with gr.Column(scale=2):
                        f_out["label"].render()
                        f_out["notes"].render()
                        f_out["bars"].render()
                f_out["heat"].render()
                f_out["tops"].render()
                with gr.Accordion("Explanation as JSON", open=False):
                    f_out["json"].render()
                f_btn.click(fewshot_classify, [f_in, fs_state],
                            [f_out[k] for k in ("label", "notes", "bars", "heat", "tops", "json")],
                            api_name="fewshot_classify", preprocess=False, **model_events)
                with gr.Accordion("Save or register the few-shot probe", open=False):
                    with gr.Row():
                        s_name = gr.Textbox(label="Name (a folder under the demo's few-shot directory)",
                                            value="my-fewshot-probe")
                        s_model = gr.Textbox(label="Registered model name", value="revelio-fewshot",
                                             interactive=svc.allow_register)
                    with gr.Row():
                        s_btn = gr.Button("Save")
                        r_btn = gr.Button("Register in MLflow", interactive=svc.allow_register)
                    s_msg = gr.Markdown()
                    s_path = gr.Textbox(visible=False)
                    r_json = gr.JSON(visible=False)
                s_btn.click(fewshot_save, [s_name, fs_state], [s_msg, s_path], api_name="fewshot_save")
                r_btn.click(fewshot_register, [s_name, s_model, fs_state], [s_msg, r_json],
                            api_name="fewshot_register")

            with gr.Tab("Latent browser", id="latents"):
                gr.Markdown("Pick a latent to see the dataset images it fires on most, how often it fires, and how "
                            "pure its top images are per concept; or search for the latents of a label.")
                with gr.Row():
                    l_num = gr.Number(value=first_live_latent(), precision=0, minimum=0,
                                      maximum=svc.clf.n_latents - 1, label=f"Latent (0–{svc.clf.n_latents - 1})")
                    l_btn = gr.Button("Show latent", variant="primary")
                with gr.Row():
                    # label choices change with the concept (per session); API callers may ask for any of
                    # them, and the service checks the pair
                    l_concept = gr.Dropdown(list(concepts), value=first_concept, label="Concept",
                                            allow_custom_value=True)
                    l_label = gr.Dropdown(concepts.get(first_concept, []) if first_concept else [],
                                          value=(concepts.get(first_concept) or [None])[0] if first_concept else None,
                                          label="Label", allow_custom_value=True)
                    l_search = gr.Button("Find latents for this label")
                l_table = gr.Dataframe(label="Latents ranked by selectivity (share of the latent's activation on "
                                             "images with this label); click a row to show it", interactive=False)
                l_md = gr.Markdown()
                l_gallery = gr.Gallery(label="Top-activating dataset images", columns=8, height=260,
                                       object_fit="contain")
                l_dist = gr.Dataframe(label="Labels of its top images", interactive=False)
                l_json = gr.JSON(visible=False)
                l_outs = [l_md, l_gallery, l_dist, l_json]
                l_btn.click(latent, l_num, l_outs, api_name="latent", **model_events)
                l_concept.change(labels_for, l_concept, l_label, api_visibility="private")
                l_search.click(latent_search, [l_concept, l_label], l_table, api_name="latent_search",
                               **model_events)
                l_table.select(pick_from_table, l_table, l_num, api_visibility="private").then(
                    latent, l_num, l_outs, api_visibility="private", **model_events)
    return demo


def _warm(svc: DemoService) -> None:
    try:
        svc.latent_index()
    except Exception:  # noqa: BLE001 - the tab reports the same problem when it is used
        log.warning("could not precompute the latent browser's statistics", exc_info=True)


def _classify_view(prefix: str, n_top: int) -> dict[str, Any]:
    """The output components of a classification (created unrendered, placed by the caller)."""
    return {
        "label": gr.Label(num_top_classes=6, label="Prediction", render=False, elem_id=f"{prefix}-label"),
        "notes": gr.Markdown(render=False),
        "bars": gr.BarPlot(x="latent", y="contribution", title="Top latents: contribution to the predicted class",
                           x_title="latent", y_title="activation × probe weight", height=260, render=False,
                           tooltip=["latent", "contribution", "activation", "weight"]),
        "heat": gr.Gallery(label="Where each latent fires in the input", columns=6, height=240, format="png",
                           object_fit="contain", render=False, elem_id=f"{prefix}-heatmaps"),
        # one row per latent: its heatmap on the input, then its top-activating dataset images
        "tops": gr.Gallery(label="Each latent: where it fires in your image, then the dataset images it fires on "
                                 "most", columns=n_top + 1, height="auto", object_fit="contain", render=False, format="png",
                           elem_id=f"{prefix}-top-images"),
        "json": gr.JSON(render=False),
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
    demo = build_app(classifier, concurrency=concurrency, note=note, **build_kw)
    demo.queue(max_size=max_queue, default_concurrency_limit=concurrency)
    if host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        log.warning("serving on %s without a login: anyone who can reach this address can use the demo "
                    "(set %s and %s to require one)", host, AUTH_USER_ENV, AUTH_PASSWORD_ENV)
    demo.launch(server_name=host, server_port=int(port), auth=auth, prevent_thread_lock=prevent_thread_lock,
                show_error=False, quiet=quiet, max_file_size=max_file_size, share=False,
                allowed_paths=[str(EXAMPLES_DIR)], ssr_mode=False)
    return demo
