"""The MLflow pyfunc models behind revelio-sae, revelio-probe and revelio-classifier.

Each is logged as *models from code*: MLflow stores a three-line Python file (ENTRY_CODE, the same as
registry/pyfunc_models.py) instead of a pickled object, and the weights as artifacts (safetensors + JSON)
under `artifacts/<kind>/`; the name of that one artifact tells the single `RevelioPyfunc` class which model
it is (no model_config: MLflow would log it as run params, which clash when one run logs several models). Signatures and input examples are logged with every model; see registry/README.md.

    revelio-sae         float32 tensor (-1, d_in)        → float32 tensor (-1, n_latents)   dense latent codes
    revelio-probe       float32 tensor (-1, n_features)  → float64 tensor (-1, n_classes)   class probabilities
    revelio-classifier  DataFrame {image: binary}        → DataFrame {label, prob.<class>…, attributions (JSON)}
                        params: top (int, default 8) attributions per image
"""
from __future__ import annotations

import base64
import io
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel

from .. import __version__
from ..inference.classifier import META, Classifier, full_proba
from ..probe import read_probe
from ..sae import read_sae
from .trust import ENTRY_CODE

ARTIFACT_KEYS = ("sae", "probe", "classifier")


def _as_array(model_input: Any, dtype=np.float32) -> np.ndarray:
    """ndarray, DataFrame, list or {name: array} → 2-D array."""
    if isinstance(model_input, dict):
        if len(model_input) != 1:
            raise ValueError(f"expected one input tensor, got {len(model_input)}: {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    if hasattr(model_input, "to_numpy"):
        model_input = model_input.to_numpy()
    x = np.asarray(model_input, dtype=dtype)
    if x.ndim == 1:
        x = x[None]
    return x


def _images(model_input: Any) -> list[Any]:
    """The classifier's inputs: a DataFrame/dict with an `image` column of encoded bytes, or arrays/bytes."""
    if hasattr(model_input, "columns"):
        if "image" not in model_input.columns:
            raise ValueError(f"the classifier takes a column 'image' (encoded image bytes); got columns "
                             f"{list(model_input.columns)}")
        items = list(model_input["image"])
    elif isinstance(model_input, dict):
        items = list(model_input["image"]) if "image" in model_input else []
        if not items:
            raise ValueError("the classifier takes {'image': [bytes, ...]}")
    elif isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8:
        items = [model_input] if model_input.ndim == 3 else list(model_input)
    else:
        items = list(model_input)
    out = []
    for it in items:
        if isinstance(it, str):  # JSON serving sends binary columns base64-encoded
            it = base64.b64decode(it)
        out.append(it)
    return out


class RevelioPyfunc(PythonModel):
    """One pyfunc class for the three registered models; the name of the model's one artifact picks the behaviour."""

    def load_context(self, context) -> None:
        kinds = [k for k in ARTIFACT_KEYS if k in (context.artifacts or {})]
        if len(kinds) != 1:
            raise FileNotFoundError(f"a revelio model has exactly one artifact named {', '.join(ARTIFACT_KEYS)}; "
                                    f"this one has: {', '.join(context.artifacts or {}) or 'none'}")
        kind = kinds[0]
        path = context.artifacts[kind]
        self.kind = kind
        if kind == "sae":
            self.model = read_sae(path)
        elif kind == "probe":
            self.model = read_probe(path)
            self.class_names = list(self.model.meta.get("class_names") or [])
        else:
            self.model = Classifier.load(path)

    # np.ndarray is one of the hints MLflow infers no schema from: inputs are checked against the logged
    # signature instead (tensors for sae/probe, an `image` column for the classifier)
    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None):
        if self.kind == "sae":
            x = _as_array(model_input)
            with torch.no_grad():
                return self.model.encode(torch.from_numpy(x)).cpu().numpy().astype(np.float32)
        if self.kind == "probe":
            x = _as_array(model_input, np.float64)
            if self.class_names:
                return full_proba(self.model, x, len(self.class_names))
            return np.asarray(self.model.predict_proba(x))
        return classify_frame(self.model, _images(model_input), int((params or {}).get("top", 8)))


def classify_frame(clf, images: list[Any], top: int = 8):
    """Predictions of the classifier as the signature's DataFrame (one row per image)."""

    rows = []
    for im in images:
        exp = clf.explain(im, top=top)
        row = {"label": exp["label"]}
        row.update({f"prob.{n}": p for n, p in exp["probs"].items()})
        row["attributions"] = json.dumps([{k: r[k] for k in ("latent", "activation", "weight", "contribution",
                                                             "top_images")} for r in exp["contributions"]])
        rows.append(row)
    return pd.DataFrame(rows, columns=["label", *[f"prob.{n}" for n in clf.class_names], "attributions"])


# --------------------------------------------------------------------------- signatures and examples
def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def signature_and_example(kind: str, payload: Path, example: Any = None):
    """(ModelSignature, input example) for a saved SAE / probe / classifier directory."""
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

    if kind == "sae":
        conf = json.loads((payload / "config.json").read_text())
        d_in, L = int(conf["d_in"]), int(conf["n_latents"])
        sig = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, d_in), "features")]),
                             Schema([TensorSpec(np.dtype(np.float32), (-1, L), "latents")]))
        ex = (np.asarray(example, np.float32)[:2] if example is not None
              else np.random.default_rng(0).standard_normal((2, d_in)).astype(np.float32))
        return sig, ex
    if kind == "probe":
        meta = json.loads((payload / "probe.json").read_text())
        nf = int(meta["n_features"])
        nc = len(meta.get("class_names") or meta["classes"])
        # float32 in: features and latents come as float32 from the store and the SAE
        sig = ModelSignature(Schema([TensorSpec(np.dtype(np.float32), (-1, nf), "inputs")]),
                             Schema([TensorSpec(np.dtype(np.float64), (-1, nc), "probabilities")]))
        ex = (np.asarray(example, np.float32)[:2] if example is not None
              else np.abs(np.random.default_rng(0).standard_normal((2, nf))).astype(np.float32))
        return sig, ex
    meta = json.loads((payload / META).read_text())
    outs = [ColSpec("string", "label")] + [ColSpec("double", f"prob.{n}") for n in meta["class_names"]] + [
        ColSpec("string", "attributions")]
    sig = ModelSignature(Schema([ColSpec("binary", "image")]), Schema(outs),
                         params=ParamSchema([ParamSpec("top", "long", 8)]))
    if example is None:
        s = int(meta["data"].get("image_size", 32))
        example = np.full((s, s, 3), 127, np.uint8)
    ex = pd.DataFrame({"image": [example if isinstance(example, bytes) else _png(example)]})
    return sig, ex


def pip_requirements() -> list[str]:
    """What a serving environment needs; given explicitly so MLflow does not infer them (slow, often wrong)."""
    return [f"revelio-svc=={__version__}", f"torch=={torch.__version__.split('+')[0]}",
            f"mlflow=={mlflow.__version__}", "safetensors", "numpy", "pandas", "pillow"]


def log_pyfunc(kind: str, payload: str | Path, example: Any = None, name: str | None = None):
    """Log a saved SAE / probe / classifier directory as a models-from-code pyfunc in the active run."""
    payload = Path(payload)
    sig, ex = signature_and_example(kind, payload, example)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "revelio_pyfunc.py"
        code.write_text(ENTRY_CODE)
        # MLflow stores an artifact directory under its own base name: stage it as `<kind>` so every model
        # has the same layout (artifacts/sae/, artifacts/probe/, artifacts/classifier/)
        staged = Path(tmp) / kind
        shutil.copytree(payload, staged)
        return mlflow.pyfunc.log_model(
            name=name or f"revelio-{kind}", python_model=str(code), artifacts={kind: str(staged)},
            signature=sig, input_example=ex, pip_requirements=pip_requirements())
