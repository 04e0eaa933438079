"""Loading registered (or pulled, or raw saved) models: `load_sae`, `load_probe`, `load_classifier`, `pull`.

The loaders read safetensors + JSON directly (never unpickle) and need MLflow only to find and download.
A registered version is read from the local cache after its first load (see access.py).
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..inference import Classifier
from ..probe import read_probe
from ..sae import read_sae
from .access import SOURCE_FILE, fetch, local_copy, model_kind, payload_dir
from .errors import MissingArtifactsError, ModelMismatchError, RegistryError, UntrustedModelError

# the files each kind must have; a load that fails with all of them present is a mismatch between them
REQUIRED = {"sae": ("sae.safetensors", "config.json"),
            "probe": ("probe.json", "probe.safetensors"),
            "classifier": ("classifier.json", "top_images.safetensors", "sae/sae.safetensors", "sae/config.json",
                           "probe/probe.json", "probe/probe.safetensors")}


def _load_error(e: Exception, kind: str, where: Path) -> RegistryError:
    """Files gone (MissingArtifactsError) vs. files that do not fit together (ModelMismatchError)."""
    gone = [f for f in REQUIRED[kind] if not (where / f).exists()]
    if gone:
        return MissingArtifactsError(f"the {kind} at {where} is incomplete: {', '.join(gone)} missing ({e})")
    return ModelMismatchError(f"the {kind} at {where} does not load: {e}")


def _read(uri: str, kind: str, reader):
    d, _ = local_copy(uri)
    p = payload_dir(d, kind)
    try:
        return reader(p)
    except (OSError, RuntimeError, ValueError) as e:
        raise _load_error(e, kind, p) from e


def load_sae(uri: str):
    """The SAE (`encode`, `decode`, `config`) that `uri` names (a classifier's SAE too)."""
    return _read(uri, "sae", read_sae)


def load_probe(uri: str):
    """The probe (`predict_proba`, `classes`, `meta`) that `uri` names (a classifier's probe too)."""
    return _read(uri, "probe", read_probe)


def load_classifier(uri: str, device: str | None = None) -> Classifier:
    """The Classifier (`predict(images)`, `explain(image)`) that `uri` names."""
    d, info = local_copy(uri)
    p = payload_dir(d, "classifier")
    try:
        clf = Classifier.load(p, device=device)
        _ = clf.adapter  # the backbone is read now: a missing one fails the load, not the first prediction
    except (OSError, RuntimeError, ValueError) as e:
        raise _load_error(e, "classifier", p) from e
    clf.source = info
    return clf


def materialize(uri: str, kind: str) -> Path:
    """A local directory with the weights of the `kind` ("sae", "probe") that `uri` names."""
    d, _ = local_copy(uri)
    return payload_dir(d, kind)


def pull(uri: str, dest: str | Path) -> Path:
    """Copy a model out of the registry into `dest`; the directory then loads with no tracking server."""
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty; pull into a new directory")
    d, info = fetch(uri, dest)
    if d.resolve() != dest.resolve():  # a local source: copy it
        shutil.copytree(d, dest, dirs_exist_ok=True)
    kind = model_kind(dest)
    if kind is None:
        raise MissingArtifactsError(f"{uri} was fetched into {dest} but holds no revelio model")
    try:
        payload_dir(dest, kind)  # raises when the weights are not there or the model's code is not ours
    except UntrustedModelError:
        shutil.rmtree(dest, ignore_errors=True)  # a tampered model is not left behind to be served from there
        raise
    info = {**info, "kind": kind, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (dest / SOURCE_FILE).write_text(json.dumps(info, indent=2, default=str))
    return dest


