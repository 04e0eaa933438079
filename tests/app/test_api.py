"""The demo through its HTTP API (gradio_client), served in-process on a tiny classifier."""
from __future__ import annotations

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from .conftest import MAX_PIXELS
from .helpers import bad_files, convertible_files, example, gradient, write_png


def _json(result):
    return result[4]


def test_model_info_names_model_backbone_hook_point_and_timestep(client, tiny_clf, tiny_model_dir):
    info = client.predict(api_name="/model_info")
    assert info["hook_point"] == "up_blocks.1" and info["timestep"] == 10
    assert info["backbone"] == tiny_clf.backbone_cfg.id
    assert info["uri"] == str(tiny_model_dir)  # a pulled directory is named by its path
    assert info["classes"] == tiny_clf.class_names
    assert info["sae"]["n_latents"] == 32 and info["sae"]["k"] == 4


def test_classify_matches_the_library_and_explains_the_predicted_class(client, tiny_clf):
    path = example("star")
    label, notes, bars, sheet, exp = client.predict(handle_file(str(path)), 6, api_name="/classify")

    probs = tiny_clf.predict([str(path)])[0]
    assert label["label"] == tiny_clf.class_names[int(np.argmax(probs))] == exp["label"]
    got = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert got == pytest.approx(dict(zip(tiny_clf.class_names, probs)), abs=1e-9)
    assert f"**{exp['label']}**" in notes

    rows = exp["contributions"]
    assert 1 <= len(rows) <= 6
    contribs = [r["contribution"] for r in rows]
    assert contribs == sorted(contribs, reverse=True)
    scale = tiny_clf.probe.scaler_scale
    for r in rows:
        # contribution = activation × probe weight, on the probe's standardised scale
        assert r["contribution"] == pytest.approx(r["activation"] / scale[r["latent"]] * r["weight"], rel=1e-9)
        assert r["activation"] > 0
        assert r["top_images"] == tiny_clf.top_images(r["latent"], 6)
        assert r["top_labels"] == [tiny_clf.class_names[tiny_clf.dataset().labels("shape")[i]]
                                   for i in r["top_images"]]
    # every heatmap and top image is in one sheet: one file per request, a row per latent, 1 + 6 tiles a row
    from PIL import Image

    from revelio_svc.app.views import THUMB, Sheet

    with Image.open(sheet) as im:
        assert im.size == Sheet(len(rows), 7, THUMB).size
    plot = bars.get("value", bars)  # the update may wrap the plot data
    col = {c: i for i, c in enumerate(plot["columns"])}
    assert [d[col["latent"]] for d in plot["data"]] == [f"#{r['latent']}" for r in rows]
    assert [d[col["contribution"]] for d in plot["data"]] == pytest.approx(contribs, abs=1e-4)
    assert exp["heatmap_grid"] == [16, 16]  # up_blocks.1 of the tiny UNet at 16 px
    assert exp["input"]["notes"] == []  # an RGB PNG needs no conversion
    fewer = client.predict(handle_file(str(path)), 2, api_name="/classify")
    assert len(_json(fewer)["contributions"]) <= 2


def test_classify_contrastive_by_default_with_density_and_the_plain_share_on_request(client, tiny_clf):
    path = example("star")
    *_, exp = client.predict(handle_file(str(path)), 12, "contrastive", False, api_name="/classify")
    assert exp["attribution"] == "contrastive" and exp["runner_up"] in tiny_clf.class_names
    coef, classes = np.asarray(tiny_clf.probe.coef), list(tiny_clf.probe.classes)
    c = classes.index(tiny_clf.class_names.index(exp["label"]))
    r = classes.index(tiny_clf.class_names.index(exp["runner_up"]))
    for row in exp["contributions"]:  # the weight is the difference of the two classes' weights
        assert row["weight"] == pytest.approx(coef[c, row["latent"]] - coef[r, row["latent"]], rel=1e-9)
        assert 0 <= row["density"] <= 1 and row["dense"] == (row["density"] > 0.5)
    *_, plain = client.predict(handle_file(str(path)), 12, "logit", False, api_name="/classify")
    assert plain["attribution"] == "logit"
    for row in plain["contributions"]:
        assert row["weight"] == pytest.approx(coef[c, row["latent"]], rel=1e-9)
    *_, hidden = client.predict(handle_file(str(path)), 12, "contrastive", True, api_name="/classify")
    assert all(not row["dense"] for row in hidden["contributions"])
    z = tiny_clf.latents([str(path)])[0]
    assert hidden["hidden_dense"] == int(((z > 0) & (tiny_clf.frequency > 0.5)).sum())
    with pytest.raises(AppError, match="attribution must be one of"):
        client.predict(handle_file(str(path)), 6, "saliency", True, api_name="/classify")


@pytest.mark.parametrize("size,expect", [((1, 1), "resized from 1×1"), ((400, 20), "resized from 400×20"),
                                         ((12, 12), "resized from 12×12")])
def test_tiny_and_extreme_aspect_uploads_say_they_were_resized(client, tmp_path, size, expect):
    path = write_png(tmp_path / "odd.png", gradient(size[1], size[0]))
    label, notes, *_, exp = client.predict(handle_file(str(path)), 6, api_name="/classify")
    assert any(n.startswith(expect) for n in exp["input"]["notes"]), exp["input"]
    assert "⚠️" in notes and expect in notes


@pytest.mark.parametrize("kind,expect", [
    ("text", "not an image file"), ("fake_png", "not an image file"),
    ("truncated", "cannot be read"), ("empty", "empty"),
])
def test_bad_files_get_a_clear_message_and_the_app_keeps_serving(client, tmp_path, kind, expect):
    path = bad_files(tmp_path)[kind]
    with pytest.raises(AppError) as err:
        client.predict(handle_file(str(path)), 6, api_name="/classify")
    msg = str(err.value)
    assert expect in msg and path.name in msg
    assert "Traceback" not in msg and str(tmp_path) not in msg  # no server paths, no stack trace
    ok = client.predict(handle_file(str(example("circle"))), api_name="/classify")
    assert _json(ok)["label"] in ok[0]["label"]


def test_too_large_image_is_refused_with_the_limit(client, tmp_path):
    side = int(MAX_PIXELS ** 0.5) + 50
    big = write_png(tmp_path / "big.png", gradient(side, side))
    with pytest.raises(AppError, match=rf"too large \({side}×{side} = {side * side:,} pixels; this demo accepts "
                                        rf"at most {MAX_PIXELS:,}\)"):
        client.predict(handle_file(str(big)), api_name="/classify")


@pytest.mark.parametrize("mode", ["grayscale", "transparency", "16-bit"])
def test_convertible_images_are_classified_and_the_conversion_is_reported(client, tmp_path, mode):
    path = convertible_files(tmp_path)[mode]
    label, notes, *_, exp = client.predict(handle_file(str(path)), api_name="/classify")
    assert label["label"] == exp["label"]
    assert any(mode in n for n in exp["input"]["notes"]), exp["input"]
    assert "Converted:" in notes and mode in notes


def test_fewshot_from_dataset_classify_save_and_reload(client, served, tiny_clf):
    summary_md, gallery, summary = client.predict("shapes", "shape", 2, 0, api_name="/fewshot_sample")
    assert summary["n_train"] == 12 and summary["per_class"] == {c: 2 for c in tiny_clf.class_names}
    assert summary["n_test"] == 24 and 0.0 <= summary["test_accuracy"] <= 1.0
    assert len(gallery) == 12 and "Held-out accuracy" in summary_md

    path = example("hexagon")
    label, *_, exp = client.predict(handle_file(str(path)), api_name="/fewshot_classify")
    assert exp["label"] == label["label"] and set(exp["probs"]) == set(tiny_clf.class_names)

    msg, saved = client.predict("fs-shapes", api_name="/fewshot_save")
    assert saved.startswith(str(served[2])) and "revelio demo --model" in msg
    from revelio_svc.inference.classifier import Classifier

    reloaded = Classifier.load(saved)
    assert reloaded.predict([str(path)])[0] == pytest.approx([exp["probs"][c] for c in reloaded.class_names])
    with pytest.raises(AppError, match="exists already"):
        client.predict("fs-shapes", api_name="/fewshot_save")
    with pytest.raises(AppError, match="not a usable name"):
        client.predict("../escape", api_name="/fewshot_save")


def test_fewshot_needs_training_first(served):
    fresh = Client(served[0], verbose=False)  # a new session has no probe yet
    with pytest.raises(AppError, match="train a few-shot probe first"):
        fresh.predict(handle_file(str(example("star"))), api_name="/fewshot_classify")
    with pytest.raises(AppError, match="less than minimum value 1"):  # the slider's own bound check
        fresh.predict("shapes", "shape", 0, 0, api_name="/fewshot_sample")
    with pytest.raises(AppError, match="has no concept 'flavour'"):
        fresh.predict("shapes", "flavour", 2, 0, api_name="/fewshot_sample")


def test_fewshot_from_uploads_skips_bad_files_and_names_them(client, tmp_path):
    bad = bad_files(tmp_path)["text"]
    args = ["round", [handle_file(str(example("circle"))), handle_file(str(example("hexagon")))],
            "pointy", [handle_file(str(example("star"))), handle_file(str(example("triangle"))),
                       handle_file(str(bad))],
            "", None, "", None]
    md, gallery, summary = client.predict(*args, api_name="/fewshot_upload")
    assert summary["classes"] == ["round", "pointy"] and summary["per_class"] == {"round": 2, "pointy": 2}
    assert len(summary["skipped"]) == 1 and "notes.txt" in summary["skipped"][0]
    assert "Skipped files" in md and len(gallery) == 4
    label, *_ = client.predict(handle_file(str(example("cross"))), api_name="/fewshot_classify")
    assert label["label"] in ("round", "pointy")

    with pytest.raises(AppError, match="at least two classes"):
        client.predict("only", [handle_file(str(example("star")))], "", None, "", None, "", None,
                       api_name="/fewshot_upload")


def test_fewshot_register_creates_a_loadable_registered_version(client, mlflow_tmp, tiny_clf):
    client.predict("shapes", "shape", 1, 0, api_name="/fewshot_sample")
    msg, reg = client.predict("fs-registered", "revelio-fewshot-test", api_name="/fewshot_register")
    assert reg["name"] == "revelio-fewshot-test" and reg["version"] == "1" and reg["champion"] is True
    assert "version 1" in msg
    from revelio_svc.registry import load_classifier

    clf = load_classifier("revelio-fewshot-test@champion")
    assert clf.class_names == tiny_clf.class_names and clf.hook_point == tiny_clf.hook_point
    assert clf.meta.get("store_uri", None) == tiny_clf.meta.get("store_uri", None)


def test_latent_page_reports_top_images_histogram_purity_control_and_cofiring(client, tiny_clf):
    live = [j for j in range(tiny_clf.n_latents) if tiny_clf.top_indices[j, 0] >= 0]
    j = live[-1]
    md, sheet, hist, cofire, concepts, st = client.predict(j, api_name="/latent")
    assert st["latent"] == j and st["top_images"] == tiny_clf.top_images(j, 12)
    assert 0.0 < st["frequency"] <= 1.0 and st["n_images"] == 40
    assert st["max_activation"] == pytest.approx(float(tiny_clf.top_values[j, 0]))
    plot = hist.get("value", hist)
    assert sum(r[plot["columns"].index("images")] for r in plot["data"]) == st["n_active"]
    rows = {r[0]: r for r in concepts["data"]}
    assert set(rows) == {"shape", "colour", "size", "background", "position"}
    assert concepts["headers"][2:4] == ["purity", "control purity"]
    assert [r[0] for r in cofire["data"]] == [c["latent"] for c in st["cofiring"]]
    assert f"Latent {j}" in md and "Fires on" in md and "**Dissection IoU** (its best concepts)" in md
    assert set(st["dissection_iou"]) <= {*tiny_clf.class_names, "star.tips", "cross.arms", "square.corners",
                                         "triangle.corners", "hexagon.corners"}
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.size[0] > 96 and im.size[1] > 96
    with pytest.raises(AppError, match="greater than maximum value 31"):  # the Number's own bound check
        client.predict(32, api_name="/latent")


def test_atlas_maps_images_and_latents(client, tiny_clf):
    img, legend, info = client.predict("images", "shape", api_name="/atlas")
    knn = info.pop("knn")
    assert info == {"view": "images", "colour_by": "shape", "n_points": 40, "method": "tsne"}
    assert "star" in legend and "every one drawn" in legend
    # how well the map carries the concept, shown under it: kNN accuracy in the codes and in the layout
    assert set(knn) == {"knn_codes", "knn_layout", "chance", "k"} and 0 <= knn["knn_layout"] <= 1
    assert f"{knn['knn_codes']:.2f} in the latent codes" in legend
    img, legend, info = client.predict("latents", "best concept", api_name="/atlas")
    assert info["n_points"] == tiny_clf.n_latents
    with pytest.raises(AppError, match="cannot colour the latents atlas by 'shape'"):
        client.predict("latents", "shape", api_name="/atlas")


def test_dataset_image_explanation_uses_the_training_time_noise(client, tiny_clf):
    exp = client.predict(5, api_name="/explain_dataset_image")
    ds = tiny_clf.dataset()
    probs = tiny_clf.predict([ds.image(5)], [ds.ids()[5]])[0]
    assert exp["probs"] == pytest.approx(dict(zip(tiny_clf.class_names, probs)), abs=1e-9)
    assert exp["input"]["dataset_index"] == 5
    with pytest.raises(AppError, match="image index must be a whole number between 0 and 39"):
        client.predict(40, api_name="/explain_dataset_image")


def test_steering_samples_the_same_seeds_with_and_without(client, tiny_clf):
    img, md, run = client.predict(3, "add", "1, 2, 4", "4", "ddim", 6, 0, 999, api_name="/steer")
    assert run["seeds"] == [0, 1, 2, 3] and len(run["variants"]) == 4 and run["variants"][0] == "baseline"
    assert run["steered_steps"] == 6 and run["mean_abs_change"][0] == 0.0
    # the shape judge's verdicts per variant: one per seed, each a shape or "?" (out of its distribution)
    from revelio_svc.interpret.judge import CLASSES

    assert [len(j["verdicts"]) for j in run["judge"]] == [4] * 4 and "Shape judge" in md
    assert all(v in (*CLASSES, "?") for j in run["judge"] for v in j["verdicts"])
    from PIL import Image

    from revelio_svc.app.views import Sheet

    with Image.open(img) as im:
        assert im.size == Sheet(4, 4, 96).size
    img, md, run = client.predict(3, "ablate", "", "0, 7", "ddpm", 4, 0, 500, api_name="/steer")
    assert run["variants"] == ["baseline", "latent 3 zeroed"] and run["seeds"] == [0, 7]
    for bad, msg in [("a, b", "give numbers"), ("", "give 1 to 6 strengths")]:
        with pytest.raises(AppError, match=msg):
            client.predict(3, "add", bad, "4", "ddim", 6, 0, 999, api_name="/steer")
    with pytest.raises(AppError, match="timestep range is empty"):
        client.predict(3, "add", "1", "4", "ddim", 6, 600, 500, api_name="/steer")


def test_steering_toward_a_class_places_its_latents_beside_the_random_control(client, tiny_clf):
    label = tiny_clf.class_names[1]
    img, md, run = client.predict(label, "2, 8", 3, "0, 1", "ddim", 6, 0, 999, api_name="/steer_class")
    assert run["variants"] == ["baseline", f"{label} latents, α = 2", f"{label} latents, α = 8",
                               "random directions, α = 2", "random directions, α = 8"]
    ex = run["exemplar"]
    assert ex["class"] == label and len(set(ex["latents"])) == 3
    ds = tiny_clf.dataset()
    assert ds.label_names()[tiny_clf.concept][ds.labels(tiny_clf.concept)[ex["image_index"]]] == label
    assert run["mean_abs_change"][0] == 0.0 and all(c > 0 for c in run["mean_abs_change"][1:])
    assert [len(j["verdicts"]) for j in run["judge"]] == [2] * 5 and f"Class **{label}**" in md
    with pytest.raises(AppError, match="dodecagon"):  # the dropdown's choices are the classifier's classes
        client.predict("dodecagon", "4", 3, "4", "ddim", 6, 0, 999, api_name="/steer_class")
    with pytest.raises(AppError, match="give 1 to 4 strengths"):
        client.predict(label, "", 3, "4", "ddim", 6, 0, 999, api_name="/steer_class")


def test_deletion_curve_of_an_upload(client, tmp_path):
    plot, md, curve = client.predict(handle_file(str(example("star"))), 8, api_name="/deletion_curve")
    assert len(curve["prob"]) == len(curve["removed"]) + 1 and 0 <= curve["auc"] <= 1
    assert "Area under the curve" in md
    with pytest.raises(AppError, match="not an image file"):
        client.predict(handle_file(str(bad_files(tmp_path)["text"])), 8, api_name="/deletion_curve")


def test_api_page_names_every_parameter_and_output(client):
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    assert [p["parameter_name"] for p in api["/classify"]["parameters"]] == ["image", "top_n", "attribution",
                                                                            "hide_dense"]
    assert [p["parameter_name"] for p in api["/steer"]["parameters"]] == [
        "latent", "mode", "strengths", "seeds", "sampler", "steps", "t_min", "t_max"]
    for name, ep in api.items():
        for p in ep["parameters"]:
            assert not p["parameter_name"].startswith("param_"), (name, p)
        for r in ep["returns"]:
            assert not r["label"].startswith("value_"), (name, r)


def test_every_api_example_runs(served, mlflow_tmp):
    """The gradio_client examples the page shows (main.API_EXAMPLES), run as written against the app."""
    from revelio_svc.app.main import API_EXAMPLES

    client = Client(served[0], verbose=False)
    files = {s: str(example(s)) for s in ("star", "circle")}
    for name, code in API_EXAMPLES.items():
        code = code.replace('"my-fewshot-probe"', '"example-probe"').replace('"my-probe"', '"example-reg"')
        out = eval(code, {"client": client, "handle_file": handle_file, **files})  # noqa: S307 - our own examples
        assert out is not None, name


def test_latent_search_ranks_latents_by_selectivity_for_a_label(client, tiny_clf):
    table = client.predict("shape", "star", api_name="/latent_search")
    rows = table["data"]
    assert rows and table["headers"][:2] == ["latent", "selectivity"]
    sel = [r[1] for r in rows]
    assert sel == sorted(sel, reverse=True) and all(0 <= s <= 1 for s in sel)
    assert all(0 <= r[0] < tiny_clf.n_latents for r in rows)
    with pytest.raises(AppError, match="has no label 'dodecagon'"):
        client.predict("shape", "dodecagon", api_name="/latent_search")


def test_model_events_share_one_concurrency_limit_and_the_app_binds_loopback(served):
    _, demo, _ = served
    assert demo.server_name == "127.0.0.1"
    by_name = {fn.api_name: fn for fn in demo.fns.values()}
    for name in ("classify", "fewshot_sample", "fewshot_upload", "fewshot_classify", "latent", "latent_search",
                 "atlas", "steer", "steer_class", "deletion_curve"):
        assert by_name[name].concurrency_limit == 2 and by_name[name].concurrency_id == "model", name
    assert demo._queue.max_size == 64


def test_concurrent_requests_get_the_same_answers_as_one_at_a_time(served, tiny_clf):
    """Two classifications run at once (concurrency 2) must not mix their activations (shared backbone hooks)."""
    import time

    url = served[0]
    paths = [example(s) for s in ("star", "circle")]
    one = Client(url, verbose=False)
    alone = [_json(one.predict(handle_file(str(p)), 6, api_name="/classify")) for p in paths]
    # make the forwards overlap and finish out of order (the tiny model alone is too fast to race): every
    # other forward stalls in its first block while the next one overtakes it
    delays = iter([0.6, 0.0] * len(paths))
    slow = tiny_clf.adapter.model.down_blocks[0].register_forward_pre_hook(
        lambda *_: time.sleep(next(delays, 0.0)))
    try:
        clients = [Client(url, verbose=False) for _ in paths]
        jobs = [c.submit(handle_file(str(p)), 6, api_name="/classify") for c, p in zip(clients, paths)]
        together = [_json(j.result(timeout=120)) for j in jobs]
    finally:
        slow.remove()
    for a, b in zip(alone, together):
        assert b["probs"] == pytest.approx(a["probs"], abs=1e-9)
        assert [r["latent"] for r in b["contributions"]] == [r["latent"] for r in a["contributions"]]


@pytest.mark.parametrize("api,args,expect", [
    ("/classify", ("IMAGE", 0), "top_n must be a whole number between 1 and 12"),
    ("/deletion_curve", ("IMAGE", 0), "n_max must be a whole number between 1 and 64"),
    ("/explain_dataset_image", ("abc",), "image index must be a whole number"),
    ("/explain_dataset_image", (-1,), "image index must be a whole number between 0 and 39"),
    ("/atlas", ("images", "flavour"), "cannot colour the images atlas by 'flavour'"),
    ("/latent", (None,), "enter a latent number"),
    ("/latent_search", ("flavour", "x"), "unknown concept 'flavour'"),
    ("/steer", (None, "add", "1", "4", "ddim", 6, 0, 999), "enter a latent number"),
    ("/steer", (3, "add", "1", "0, 0", "ddim", 6, 0, 999), "distinct"),
    ("/steer", (3, "add", "1e9", "4", "ddim", 6, 0, 999), "between -1000 and 1000"),
    ("/steer_class", ("star", "1, 2, 4, 8, 16", 4, "4", "ddim", 6, 0, 999), "give 1 to 4 strengths"),
    ("/fewshot_save", ("x",), "train a few-shot probe first"),
])
def test_bad_input_to_any_endpoint_is_a_message_not_a_traceback(served, api, args, expect):
    client = Client(served[0], verbose=False)
    args = tuple(handle_file(str(example("star"))) if a == "IMAGE" else a for a in args)
    with pytest.raises(AppError) as err:
        client.predict(*args, api_name=api)
    assert expect in str(err.value) and "Traceback" not in str(err.value)
