"""How much a unit's top-activating images agree on a label: `sigma_label` and `label_purity`.

A *unit* is anything with one activation per image: an SAE latent (image-level, from
`revelio_svc.sae.image_latents`), a random unit direction u in feature space (activation ReLU(⟨x, u⟩),
pooled over positions like the SAE's latents) or a raw channel (ReLU(x_c), same pooling).
`acts` arrays are (n_images, n_units).

- `sigma_label` (Revelio, Kim et al. 2025), as docs/findings.md defines it and `probe.metrics` computes
  it (one definition for the whole package): for each unit active (> 0) on at least `top_n` = 20 images,
  the spread sqrt(Σ_c p_c (1 − p_c)) of the label frequencies p over its `top_n` most activating
  images, averaged over units. Lower = more label-consistent. It does not depend on how classes are
  numbered (the std of integer class ids did).
- `label_purity` per concept: for each unit active on at least `top_n` images, the share of its `top_n`
  most activating images that carry the majority label among them. Binary and easy concepts make any
  set look pure, so purity is always reported next to random directions, raw channels and chance
  (`chance_purity`: the same statistic for random image sets).
- Redundancy: a dictionary can repeat one direction many times (random dictionaries on features with a
  dominant direction do), and each copy would count as one more pure unit. `redundancy_groups` joins
  units whose image activations correlate above 0.9 or that share their top images; `purity_report`
  counts each group once and also gives the best unit per class and how many classes have a pure unit.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from ..sae.base import pooling_q
from ..sae.latents import pool_positions


def top_rows(acts: np.ndarray, n: int) -> np.ndarray:
    """Row indices of the n largest activations of each unit, (n_units, n), largest first.

    Ties are broken by the lower row index among the candidates.
    """
    acts = np.asarray(acts)
    n_img = acts.shape[0]
    n = min(n, n_img)
    if n <= 0:
        return np.zeros((acts.shape[1], 0), np.int64)
    if n < n_img:
        cand = np.argpartition(-acts, n - 1, axis=0)[:n]  # (n, units), unordered
    else:
        cand = np.broadcast_to(np.arange(n_img)[:, None], acts.shape).copy()
    vals = np.take_along_axis(acts, cand, axis=0)
    # sort candidates by (-value, row)
    order = np.lexsort((cand, -vals), axis=0)
    return np.take_along_axis(cand, order, axis=0).T.astype(np.int64)


def label_spread(labels: np.ndarray, n_classes: int) -> float:
    """Spread of categorical labels: the total std of their one-hot codes, sqrt(sum_c p_c (1 - p_c)).

    0 when every label is the same, sqrt(1 - 1/K) when they are uniform over K classes. Unlike the std
    of label ids, it does not depend on how classes happen to be numbered.
    """
    labels = np.asarray(labels)
    if labels.size == 0:
        return float("nan")
    p = np.bincount(labels, minlength=n_classes) / labels.size
    return float(np.sqrt(np.sum(p * (1 - p))))


def sigma_label_stats(acts: np.ndarray, labels: np.ndarray, n_classes: int, top_n: int = 20,
                      require_active: bool = True) -> dict[str, float]:
    """The paper's label spread over top-activating images, for every unit of `acts` (n_images, n_units).

    For each unit active (> 0) on at least `top_n` images (every unit when `require_active` is False, as
    for raw channels, which are signed and have no "inactive"), take its `top_n` highest-activating images and
    measure the spread of their labels (`label_spread`); report the mean over those units, how many
    qualified, and the same spread for the whole dataset (what a unit that ignores the label gets).
    Lower is more monosemantic for this concept.
    """
    acts = np.asarray(acts)
    labels = np.asarray(labels)
    if acts.ndim != 2 or len(acts) != len(labels):
        raise ValueError(f"acts must be (n_images, n_units) with one label per image; got {acts.shape}, "
                         f"{labels.shape}")
    active = ((acts > 0).sum(axis=0) >= top_n) if require_active else np.ones(acts.shape[1], bool)
    units = np.flatnonzero(active)
    base = label_spread(labels, n_classes)
    if units.size == 0 or len(acts) < top_n:
        return {"sigma_label": float("nan"), "sigma_label_units": 0, "sigma_label_chance": base}
    # argpartition keeps this O(n·units); the order inside the top set does not matter to the spread
    top = np.argpartition(-acts[:, units], top_n - 1, axis=0)[:top_n]  # (top_n, units)
    top_labels = labels[top]
    onehot = np.zeros((units.size, n_classes))
    for c in range(n_classes):
        onehot[:, c] = (top_labels == c).mean(axis=0)
    spreads = np.sqrt(np.sum(onehot * (1 - onehot), axis=1))
    return {"sigma_label": float(spreads.mean()), "sigma_label_units": int(units.size), "sigma_label_chance": base}


def sigma_label(acts: np.ndarray, labels: np.ndarray, top_n: int = 20, n_classes: int | None = None) -> float:
    """Mean label spread over each active unit's top images (see the module docstring); NaN if no unit qualifies."""
    labels = np.asarray(labels).astype(np.int64)
    acts = np.asarray(acts)
    if acts.shape[0] != labels.shape[0]:
        raise ValueError(f"acts has {acts.shape[0]} images but labels has {labels.shape[0]}")
    n_classes = int(labels.max()) + 1 if n_classes is None and labels.size else (n_classes or 1)
    return sigma_label_stats(acts, labels, n_classes, top_n=min(top_n, len(labels)))["sigma_label"]


def majority(acts: np.ndarray, labels: np.ndarray, top_n: int = 20) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per unit over its top_n images: (majority label, its share, label counts (n_units, n_classes))."""
    labels = np.asarray(labels).astype(np.int64)
    top = top_rows(acts, top_n)
    n_classes = int(labels.max()) + 1 if labels.size else 1
    lab = labels[top]  # (units, top_n)
    counts = np.zeros((lab.shape[0], n_classes), np.int64)
    np.add.at(counts, (np.repeat(np.arange(lab.shape[0]), lab.shape[1]), lab.reshape(-1)), 1)
    maj = counts.argmax(1)
    share = counts.max(1) / max(lab.shape[1], 1)
    return maj, share, counts


def label_purity(acts: np.ndarray, labels: np.ndarray, top_n: int = 20, min_active: int | None = None) -> np.ndarray:
    """Per-unit purity (n_units,): majority-label share of the top_n images; NaN for units active on
    fewer than `min_active` (default top_n) images."""
    acts = np.asarray(acts)
    if acts.shape[0] != np.asarray(labels).shape[0]:
        raise ValueError(f"acts has {acts.shape[0]} images but labels has {np.asarray(labels).shape[0]}")
    min_active = top_n if min_active is None else min_active
    _, share, _ = majority(acts, labels, top_n)
    out = share.astype(np.float64)
    out[(acts > 0).sum(0) < min_active] = np.nan
    return out


def chance_purity(labels: np.ndarray, top_n: int = 20, n_draws: int = 2000, seed: int = 0) -> float:
    """Expected purity of `top_n` images drawn at random (without replacement)."""
    labels = np.asarray(labels).astype(np.int64)
    rng = np.random.default_rng(seed)
    n = min(top_n, len(labels))
    draws = np.stack([rng.choice(len(labels), n, replace=False) for _ in range(n_draws)])
    lab = labels[draws]
    counts = np.stack([np.bincount(r, minlength=int(labels.max()) + 1) for r in lab])
    return float((counts.max(1) / n).mean())


def purity_summary(purity: np.ndarray, threshold: float = 0.6) -> dict[str, float]:
    """mean, share above `threshold`, max and count over the eligible (non-NaN) units."""
    p = np.asarray(purity, np.float64)
    p = p[~np.isnan(p)]
    if p.size == 0:
        return {"mean": float("nan"), "share_above": float("nan"), "max": float("nan"), "n_units": 0}
    return {"mean": float(p.mean()), "share_above": float((p > threshold).mean()), "max": float(p.max()),
            "n_units": int(p.size)}


def redundancy_groups(acts: np.ndarray, corr: float = 0.9, top_n: int = 20) -> np.ndarray:
    """Group id per unit (n_units,): units linked when their image activations correlate above `corr`
    (Pearson: raw cosine of non-negative activations is high for any two busy units) or when their
    `top_n` image sets are identical; groups are the connected components of those links.

    Constant units have no correlation and join only through identical top sets.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    acts = np.asarray(acts, np.float64)
    n = acts.shape[1]
    if n == 0:
        return np.zeros(0, np.int64)
    z = acts - acts.mean(0)
    norm = np.linalg.norm(z, axis=0)
    ok = norm > 1e-12
    z[:, ok] /= norm[ok]
    z[:, ~ok] = 0.0
    rows, cols = [], []
    for s in range(0, n, 1024):  # bounded memory for wide dictionaries
        c = z[:, s:s + 1024].T @ z
        r, q = np.nonzero(c > corr)
        rows.append(r + s)
        cols.append(q)
    top = np.sort(top_rows(acts, top_n), axis=1)
    _, first = np.unique(top, axis=0, return_inverse=True)
    first = np.asarray(first).ravel()
    rows.append(np.arange(n))
    cols.append(first.astype(np.int64) + n)  # each unit to a node for its top set
    r, q = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r)), (r, q)), shape=(2 * n, 2 * n))
    _, lab = connected_components(graph, directed=False)
    _, group = np.unique(lab[:n], return_inverse=True)
    return np.asarray(group, np.int64).ravel()


def purity_report(acts: np.ndarray, labels: np.ndarray, top_n: int = 20, threshold: float = 0.6,
                  corr: float = 0.9, n_classes: int | None = None) -> dict[str, float]:
    """Purity of one concept in forms redundancy cannot inflate.

    - `share_above`, `mean`, `n_units`: over eligible units (active on ≥ top_n images), as `purity_summary`;
    - `n_groups`, `share_above_dedup`, `n_pure_dedup`: the same with each redundancy group counted once
      (a group's purity is the mean of its eligible members);
    - `best.<class>`: the best purity of a unit whose majority is that class (0 when none);
    - `classes_with_pure_unit`: classes whose best unit exceeds `threshold`.
    """
    labels = np.asarray(labels).astype(np.int64)
    n_classes = int(labels.max()) + 1 if n_classes is None else n_classes
    pur = label_purity(acts, labels, top_n)
    maj, _, _ = majority(acts, labels, top_n)
    ok = ~np.isnan(pur)
    out = {f"{k}": v for k, v in purity_summary(pur, threshold).items()}
    groups = redundancy_groups(np.asarray(acts)[:, ok], corr, top_n) if ok.any() else np.zeros(0, np.int64)
    if groups.size:
        g_pur = np.bincount(groups, weights=pur[ok]) / np.bincount(groups)
        out["n_groups"] = int(g_pur.size)
        out["share_above_dedup"] = float((g_pur > threshold).mean())
        out["n_pure_dedup"] = int((g_pur > threshold).sum())
    else:
        out.update({"n_groups": 0, "share_above_dedup": float("nan"), "n_pure_dedup": 0})
    out["n_pure"] = int((pur[ok] > threshold).sum())
    best = np.zeros(n_classes)
    for c in range(n_classes):
        sel = ok & (maj == c)
        best[c] = float(pur[sel].max()) if sel.any() else 0.0
        out[f"best.{c}"] = best[c]
    out["classes_with_pure_unit"] = int((best > threshold).sum())
    out["best_mean"] = float(best.mean())
    return out


# --------------------------------------------------------------------------- baselines
def random_directions(dim: int, n: int, seed: int = 0) -> np.ndarray:
    """n random unit vectors in R^dim (rows), float32."""
    d = np.random.default_rng(seed).standard_normal((n, dim))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d.astype(np.float32)


def direction_activations(feats: np.ndarray, directions: np.ndarray | None, pooling: str = "max",
                          batch: int | None = None) -> np.ndarray:
    """ReLU(⟨x, u⟩) per unit direction u, pooled over positions for token features (max | mean | top<q>).

    feats: (n, C) or (n, H, W, C); directions: (n_units, C), or None for the raw channels (ReLU(x_c)).
    Returns (n, n_units) float32.
    """
    import torch

    feats = np.asarray(feats)
    pooling_q(pooling)  # names the choices on a bad value
    C = feats.shape[-1]
    D = None if directions is None else torch.from_numpy(np.ascontiguousarray(directions, np.float32))
    if D is not None and D.shape[1] != C:
        raise ValueError(f"directions have dimension {D.shape[1]}, features {C}")
    n_units = C if D is None else D.shape[0]
    per = int(np.prod(feats.shape[1:-1])) if feats.ndim == 4 else 1
    batch = batch or max(1, (1 << 22) // max(1, per * n_units))
    out = np.zeros((feats.shape[0], n_units), np.float32)
    with torch.no_grad():
        for s in range(0, feats.shape[0], batch):
            x = torch.from_numpy(np.ascontiguousarray(feats[s:s + batch], np.float32)).reshape(-1, per, C)
            a = torch.relu(x if D is None else x @ D.T)  # (b, per, units)
            out[s:s + batch] = pool_positions(a, pooling).numpy()
    return out


def compare_purity(acts_by_method: dict[str, np.ndarray], labels: dict[str, np.ndarray], top_n: int = 20,
                   threshold: float = 0.6, seed: int = 0) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Purity per concept for each method (sae / random / channels ...), with chance.

    Returns (summary {concept: {method: purity_summary, "chance": float}}, purities {concept: {method: array}}).
    """
    summary: dict = {}
    purities: dict[str, dict[str, np.ndarray]] = {}
    for concept, lab in labels.items():
        purities[concept] = {m: label_purity(a, lab, top_n) for m, a in acts_by_method.items()}
        summary[concept] = {m: purity_summary(p, threshold) for m, p in purities[concept].items()}
        summary[concept]["chance"] = chance_purity(lab, top_n, seed=seed)
    return summary, purities


def plot_purity_distributions(purities: dict[str, dict[str, np.ndarray]], chance: dict[str, float] | None = None,
                              threshold: float = 0.6, methods: Iterable[str] | None = None):
    """One panel per concept: histograms of unit purity per method, chance and the threshold marked."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    concepts = list(purities)
    fig, axes = plt.subplots(1, max(1, len(concepts)), figsize=(4.2 * max(1, len(concepts)), 3.4), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, c in zip(axes[0], concepts):
        for m in (methods or purities[c].keys()):
            p = purities[c][m]
            p = p[~np.isnan(p)]
            if p.size:
                ax.hist(p, bins=bins, histtype="step", density=True, linewidth=1.6, label=f"{m} (n={p.size})")
        if chance and c in chance:
            ax.axvline(chance[c], color="grey", linestyle=":", label=f"chance {chance[c]:.2f}")
        ax.axvline(threshold, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(f"label purity: {c}")
        ax.set_xlabel("share of top images with the majority label")
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("density")
    fig.tight_layout()
    return fig


def label_metrics(acts: np.ndarray, labels: np.ndarray, top_n: int = 20) -> dict[str, float]:
    """sigma_label and mean label_purity of units `acts` for one concept: the SAE's headline numbers."""
    purity = label_purity(acts, labels, top_n)
    finite = purity[~np.isnan(purity)]
    return {"sigma_label": sigma_label(acts, labels),
            "label_purity": float(finite.mean()) if finite.size else float("nan")}
