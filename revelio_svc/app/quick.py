"""Build a working Classifier from a config in seconds, without the training pipeline.

For tests, the benchmark and screenshots: the backbone comes from the config (or, when the configured
backbone is not available here, the same architecture with random weights, and the result says so); the
SAE is initialised from the data (normalisation statistics and `b_pre` from the features, random unit
directions, no training); the linear probe is fitted on its latents. The predictions mean little; the
shapes, the code paths and the costs are those of a real classifier.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from revelio_svc.config import Config, replace


@dataclass
class QuickClassifier:
    classifier: object
    backbone_note: str  # what backbone was used, and whether it is a random-weight stand-in


def _adapter(cfg: Config):
    """The configured backbone, or the default architecture with random weights when it is not available."""
    from revelio_svc.backbones import ModelUnavailableError, load_backbone

    try:
        return cfg, load_backbone(cfg.backbone), f"{cfg.backbone.id} ({cfg.backbone.init} weights)"
    except ModelUnavailableError as e:
        if not cfg.backbone.id.startswith("builtin:"):
            raise
        import tempfile

        import torch

        from revelio_svc.backbones.unet2d import build_unet

        torch.manual_seed(cfg.backbone.init_seed)
        unet = build_unet(cfg.pretrain, cfg.data.image_size)
        d = tempfile.mkdtemp(prefix="revelio-random-unet-")
        unet.save_pretrained(d)
        cfg = replace(cfg, **{"backbone.id": d, "backbone.kind": "unet2d"})
        note = (f"{e.args[0].split(';')[0]}: using the default architecture "
                f"{tuple(cfg.pretrain.block_out_channels)} with RANDOM weights instead")
        return cfg, load_backbone(cfg.backbone), note


def quick_classifier(cfg: Config, *, n_images: int | None = None, n_latents: int | None = None,
                     k: int | None = None, top_n: int = 16, seed: int = 0) -> QuickClassifier:
    """A Classifier on `cfg`'s dataset, backbone, SAE hook point/timestep and probe concept (see module doc)."""
    import scipy.sparse as sp
    import torch

    from revelio_svc.data import load_dataset
    from revelio_svc.inference.classifier import Classifier, top_image_labels, top_k_rows
    from revelio_svc.probe import fit_linear_probe
    from revelio_svc.sae import TopKSAEConfig, build_sae, image_latents

    if n_images:
        cfg = replace(cfg, **{"data.n_images": int(n_images)})
    cfg, adapter, note = _adapter(cfg)
    ds = load_dataset(cfg.data)
    hp, t = cfg.sae.hook_point, int(cfg.sae.timestep)
    if hp not in adapter.hook_points():
        hp = adapter.hook_points()[-1]  # tiny test backbones have fewer blocks than the default config names
    images = ds.images(range(len(ds)))
    ids = ds.ids()

    tok = _tokens(adapter, images, ids, hp, t, cfg.extract.noise_seed)
    C = tok.shape[-1]
    L = int(n_latents or C * cfg.sae.expansion)
    sae_cfg = TopKSAEConfig(d_in=C, n_latents=L, k=int(min(k or cfg.sae.k, L)), relu=True, normalize="scalar",
                            hook_point=hp, timestep=t, backbone=cfg.backbone.id, backbone_init=cfg.backbone.init,
                            input="tokens", latent_pooling=cfg.sae.latent_pooling)
    sae = build_sae(sae_cfg, seed=seed)
    sae.init_from_data(torch.from_numpy(tok.reshape(-1, C)))
    sae.eval()
    z = np.asarray(image_latents(sae, tok), np.float32)

    concept = cfg.probe.concept if cfg.probe.concept in [c.name for c in ds.concepts] else ds.concepts[0].name
    y = ds.labels(concept)
    probe = fit_linear_probe(sp.csr_matrix(z.astype(np.float64)), y, C=cfg.probe.C, max_iter=cfg.probe.max_iter,
                             meta={"input": "sae", "concept": concept, "hook_point": hp, "timestep": t,
                                   "class_names": list(ds.concept(concept).classes)})
    top_v, top_i = top_k_rows(z.T.copy(), np.broadcast_to(np.arange(len(ds)), (L, len(ds))).copy(), top_n)
    if top_v.shape[1] < top_n:
        pad = top_n - top_v.shape[1]
        top_v = np.concatenate([top_v, np.zeros((L, pad), np.float32)], 1)
        top_i = np.concatenate([top_i, np.full((L, pad), -1, np.int64)], 1)
    top_i = np.where(top_v > 0, top_i, -1)
    clf = Classifier(backbone=cfg.backbone, hook_point=hp, timestep=t, noise_seed=cfg.extract.noise_seed, sae=sae,
                     probe=probe, class_names=list(ds.concept(concept).classes), concept=concept, data=cfg.data,
                     top_indices=top_i, top_values=np.maximum(top_v, 0).astype(np.float32),
                     meta={"quick": True, "backbone_note": note}, frequency=(z > 0).mean(0),
                     top_labels=top_image_labels(top_i, np.arange(len(ds)), y))
    clf._adapter = adapter
    clf.source = {"name": "quick classifier (untrained SAE)", "uri": "", "version": ""}
    return QuickClassifier(clf, note)


def _tokens(adapter, images: np.ndarray, ids: list[str], hook_point: str, t: int, seed: int,
            batch: int = 32) -> np.ndarray:
    """Token features (n, H, W, C): the same steps as `Classifier.tokens` (a test checks they agree)."""
    import torch

    out = []
    for b in range(0, len(images), batch):
        x0 = adapter.encode(images[b:b + batch])
        xt = adapter.add_noise(x0, t, ids[b:b + batch], seed)
        m = adapter.capture(xt, t, adapter.conditioning(len(x0)), [hook_point])[hook_point]
        with torch.no_grad():
            out.append(m.float().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out)
