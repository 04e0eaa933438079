"""The classifier stage: bundle a trained SAE and the linear probe on its latents into one Classifier."""
from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import Config
from ..contracts import EVALUATION_FILE, Artifact, StageResult
from ..features.store import open_store
from ..identity import Paths, digest
from ..inference import Classifier, explanation_figure
from ..inference.precision import classifier_precision
from ..sae import image_latents, read_sae
from ..sae.io import sae_identity


@dataclass(frozen=True, kw_only=True)
class ClassifierResult(StageResult):
    classifier_dir: Path
    sae_dir: Path
    probe_dir: Path
    # realistic inputs for the registered models' examples (None when the store could not give them)
    sae_example: np.ndarray | None = None  # two feature vectors the SAE reads
    probe_example: np.ndarray | None = None  # their image-level latents
    image_example: np.ndarray | None = None  # one test image of the dataset

    def outputs(self) -> dict[str, str]:
        return {"classifier_dir": str(self.classifier_dir)}


def _feature_examples(sae_dir: Path, store_uri: str) -> tuple[np.ndarray, np.ndarray]:
    sae = read_sae(sae_dir)
    sc = sae.config
    store = open_store(store_uri)
    key = "tokens" if sc.input == "tokens" else (sc.pooling or "mean")
    feats = store.feature_set(sc.hook_point, sc.timestep, key).shard(store.shard_ids[0])[:2].astype(np.float32)
    return feats.reshape(-1, feats.shape[-1])[:2], image_latents(sae, feats).astype(np.float64)


def _explanation_metrics(clf: Classifier, store_uri: str) -> dict[str, float]:
    """Explanation precision of the classifier against its controls (inference.precision); a store that cannot
    give it (another concept, no test rows) only loses the numbers, with a note."""
    try:
        return classifier_precision(clf, open_store(store_uri))
    except (OSError, KeyError, ValueError) as e:
        print(f"note: no explanation precision ({type(e).__name__}: {e})", file=sys.stderr)
        return {}


def build_classifier_stage(cfg: Config, sae_dir: str | Path, probe_dir: str | Path, store_uri: str) -> ClassifierResult:
    """Build and save the classifier (SAE + probe + top images per latent) with an example explanation."""
    sae_dir, probe_dir = Path(sae_dir), Path(probe_dir)
    top_n = cfg.pipeline.top_images
    identity = digest({"sae": sae_identity(sae_dir), "probe": probe_dir.name, "top_images": top_n})
    out = Paths.under(cfg.output_dir).classifier(identity)
    clf = Classifier.build(cfg, sae_dir, probe_dir, store_uri, top_n=top_n)
    metrics = _explanation_metrics(clf, store_uri)
    if metrics:  # kept with the classifier: the demo shows them beside every explanation
        clf.meta["metrics"] = {**dict(clf.meta.get("metrics") or {}), **metrics}
    clf.save(out)
    if (probe_dir / EVALUATION_FILE).is_file():  # what the registry compares champions on
        shutil.copy2(probe_dir / EVALUATION_FILE, out / EVALUATION_FILE)
    artifacts: list[Artifact] = []
    sae_ex = probe_ex = image = None
    try:
        sae_ex, probe_ex = _feature_examples(sae_dir, store_uri)
    except (OSError, KeyError, ValueError) as e:  # examples are documentation: never a reason to fail
        print(f"note: input examples fall back to synthetic ones ({type(e).__name__}: {e})", file=sys.stderr)
    try:
        import matplotlib.pyplot as plt  # deferred: pyplot picks a backend on import; figures here are files

        store = open_store(store_uri)
        test_rows = store.index()[store.is_test()]
        image = clf.dataset().image(int(test_rows[0] if len(test_rows) else store.index()[0]))
        fig = explanation_figure(clf, clf.explain(image, top=4))
        fig.savefig(out / "example_explanation.png", dpi=100)
        plt.close(fig)
        artifacts.append(Artifact(out / "example_explanation.png", "classifier"))
    except Exception as e:  # noqa: BLE001 - the dataset may be gone; the classifier is still good
        print(f"note: no example explanation figure ({type(e).__name__}: {e})", file=sys.stderr)
    return ClassifierResult(identity=identity, metrics=metrics, artifacts=tuple(artifacts), classifier_dir=out,
                            sae_dir=sae_dir,
                            probe_dir=probe_dir, sae_example=sae_ex, probe_example=probe_ex, image_example=image)
