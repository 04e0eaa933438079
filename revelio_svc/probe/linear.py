"""Linear probe: multinomial logistic regression on pooled features or on SAE latents.

The trained probe is plain arrays (coef, intercept, scaler mean/scale) plus a JSON description, saved as
safetensors + JSON and predicted with numpy, so loading never unpickles anything and needs no sklearn.

SAE latents are sparse and non-negative: they stay a `scipy.sparse` CSR matrix all the way into the solver,
and their standardisation only scales (no centring), because subtracting a mean would make every entry
non-zero.
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from safetensors.numpy import load_file, save_file

from ..jsonmeta import json_default, read_versioned_json

if TYPE_CHECKING:
    from sklearn.linear_model import LogisticRegression

FORMAT = "revelio-probe"
VERSION = 1
WEIGHTS = "probe.safetensors"
META = "probe.json"
SMALL_PROBLEM = 4_000_000  # rows × features below which the solver runs on one BLAS thread


class ProbeFormatError(ValueError):
    """A saved probe is missing, malformed or of another kind/version; the message says which."""


Matrix = np.ndarray | sp.spmatrix | sp.sparray


# --------------------------------------------------------------------------- standardisation
def fit_scaler(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (mean, scale) from training rows only.

    Dense: centre and divide by the std. Sparse: mean is zero (scale only) so the matrix stays sparse;
    scale is still the std of the column. Constant columns get scale 1 instead of a division by zero.
    """
    if sp.issparse(X):
        X = sp.csr_matrix(X, dtype=np.float64)
        mean = np.asarray(X.mean(axis=0)).ravel()
        mean_sq = np.asarray(X.multiply(X).mean(axis=0)).ravel()
        var = np.maximum(mean_sq - mean ** 2, 0.0)
        centre = np.zeros_like(mean)
    else:
        X = np.asarray(X, np.float64)
        centre = X.mean(axis=0)
        var = X.var(axis=0)
    scale = np.sqrt(var)
    scale[scale < 1e-12] = 1.0
    return centre, scale


def apply_scaler(X: Matrix, mean: np.ndarray, scale: np.ndarray) -> Matrix:
    """Standardise with fitted statistics; a sparse input comes back as CSR (never densified)."""
    if sp.issparse(X):
        if np.any(mean != 0):
            raise ValueError("a probe fitted with centring (dense input) cannot take a sparse matrix: "
                             "centring would densify it; pass a dense array")
        return (sp.csr_matrix(X, dtype=np.float64) @ sp.diags(1.0 / scale)).tocsr()
    X = np.asarray(X, np.float64)
    return (X - mean) / scale


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------- the probe
@dataclass
class LinearProbe:
    """A fitted probe as plain arrays; `predict_proba` columns follow `classes` (label ids)."""

    coef: np.ndarray  # (n_classes_fit, n_features), float64
    intercept: np.ndarray  # (n_classes_fit,)
    scaler_mean: np.ndarray  # (n_features,), zeros for sparse input
    scaler_scale: np.ndarray  # (n_features,)
    classes: np.ndarray  # (n_classes_fit,) int64 label ids seen in training
    meta: dict[str, Any] = field(default_factory=dict)

    kind = "linear"

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    def _check(self, X: Matrix) -> None:
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"the probe takes (n, {self.n_features}) inputs, got {tuple(X.shape)}")

    def decision_function(self, X: Matrix) -> np.ndarray:
        self._check(X)
        Z = apply_scaler(X, self.scaler_mean, self.scaler_scale) @ self.coef.T
        return np.asarray(Z) + self.intercept

    def predict_proba(self, X: Matrix) -> np.ndarray:
        return softmax(self.decision_function(X))

    def predict(self, X: Matrix) -> np.ndarray:
        return self.classes[np.argmax(self.decision_function(X), axis=1)]

    # persistence ------------------------------------------------------------
    def save(self, directory: str | Path) -> dict[str, Path]:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        save_file({"coef": np.ascontiguousarray(self.coef), "intercept": np.ascontiguousarray(self.intercept),
                   "scaler_mean": np.ascontiguousarray(self.scaler_mean),
                   "scaler_scale": np.ascontiguousarray(self.scaler_scale)}, str(d / WEIGHTS))
        meta = {"format": FORMAT, "version": VERSION, "kind": self.kind,
                "classes": [int(c) for c in self.classes], "n_features": self.n_features, **self.meta}
        (d / META).write_text(json.dumps(meta, indent=2, sort_keys=True, default=json_default))
        return {"weights": d / WEIGHTS, "meta": d / META}

    @classmethod
    def load(cls, directory: str | Path) -> LinearProbe:
        d = Path(directory)
        meta = read_meta(d, "linear")
        w = load_file(str(d / WEIGHTS))
        missing = {"coef", "intercept", "scaler_mean", "scaler_scale"} - set(w)
        if missing:
            raise ProbeFormatError(f"{d / WEIGHTS} lacks tensors {sorted(missing)}")
        classes = np.asarray(meta.pop("classes"), np.int64)
        for k in ("format", "version", "kind", "n_features"):
            meta.pop(k, None)
        return cls(w["coef"], w["intercept"], w["scaler_mean"], w["scaler_scale"], classes, meta)


def read_meta(directory: Path, kind: str | None = None) -> dict[str, Any]:
    """The probe's JSON, checked for format, version and (optionally) kind."""
    path = Path(directory) / META
    meta = read_versioned_json(path, FORMAT, VERSION, "probe", ProbeFormatError)
    if kind is not None and meta.get("kind") != kind:
        raise ProbeFormatError(f"{path} holds a {meta.get('kind')!r} probe, not {kind!r}")
    return meta


# --------------------------------------------------------------------------- fitting
def __getattr__(name: str):
    # scikit-learn takes seconds to import and loading or applying a probe never needs it: `LogisticRegression`
    # is resolved here on first use (and can still be replaced on the module, as tests do)
    if name == "LogisticRegression":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def fit_warnings() -> tuple[type[Warning], ...]:
    """What a fit says on stderr that it also records (`meta["converged"]`): for `thread_map(quiet=...)`."""
    from sklearn.exceptions import ConvergenceWarning

    return (ConvergenceWarning,)


def _solver_class():
    return globals().get("LogisticRegression") or __getattr__("LogisticRegression")


PENALTIES = ("l2", "l1")


def check_penalty(penalty: str) -> str:
    if penalty not in PENALTIES:
        raise ValueError(f"probe penalty must be one of {', '.join(PENALTIES)}, got {penalty!r}")
    return penalty


def make_solver(C: float, max_iter: int, seed: int = 0, penalty: str = "l2") -> LogisticRegression:
    """The solver: lbfgs (L2) is multinomial for >2 classes and accepts CSR input without densifying it; L1
    needs saga, which is multinomial and CSR-friendly too (a looser tolerance: saga's default takes minutes
    on a thousand latents for no change in the support)."""
    if check_penalty(penalty) == "l1":
        return _solver_class()(C=C, max_iter=max_iter, solver="saga", l1_ratio=1.0, tol=1e-3, random_state=seed)
    return _solver_class()(C=C, max_iter=max_iter, solver="lbfgs", random_state=seed)


def l1_C(C: float, n_rows: int, n_ref: int | None) -> float:
    """An L1 probe's C for a fit on `n_rows` rows when C is stated for `n_ref` rows (None: as given).

    scikit-learn minimises ||w||_1 + C·Σ_i loss_i: the data term grows with the rows and the penalty does not,
    so a C that suits the full training set zeroes every weight of a one-image-per-class fit (accuracy at
    chance). Scaling C by n_ref / n_rows keeps the penalty per row the same. An L2 probe keeps C as given (its
    few-shot fits are sensible at any size)."""
    return float(C) * (n_ref / n_rows) if n_ref and n_rows else float(C)


def fit_linear_probe(X: Matrix, y: np.ndarray, *, C: float = 1.0, max_iter: int = 1000, seed: int = 0,
                     meta: dict[str, Any] | None = None, penalty: str = "l2", n_ref: int | None = None) -> LinearProbe:
    """Fit on training rows only. Dense → centred and scaled; scipy.sparse → scaled only, kept sparse.
    penalty "l1" zeroes most weights (each class then rests on few inputs); C is its inverse strength, stated
    for `n_ref` rows when given (`l1_C`)."""
    y = np.asarray(y, np.int64)
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but y has {y.shape[0]} labels")
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"a probe needs training rows of at least two classes; got only {classes.tolist()}")
    sparse = sp.issparse(X)
    if sparse:
        X = sp.csr_matrix(X, dtype=np.float64)
    else:
        X = np.asarray(X, np.float64)
        if X.ndim != 2:
            raise ValueError(f"the linear probe takes (n, d) inputs; got shape {X.shape} (pool spatial maps first)")
        if not np.isfinite(X).all():
            raise ValueError("the features contain NaN or inf; re-extract them (float16 overflow?)")
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    mean, scale = fit_scaler(X)
    Xs = apply_scaler(X, mean, scale)
    C_fit = l1_C(C, len(y), n_ref) if penalty == "l1" else float(C)
    solver = make_solver(C_fit, max_iter, seed, penalty)
    # On small problems BLAS threads cost more than they save (3× slower measured on a busy 2-core machine);
    # large ones keep the library's default.
    small = X.shape[0] * X.shape[1] < SMALL_PROBLEM
    with warnings.catch_warnings(), (threadpool_limits(limits=1) if small else contextlib.nullcontext()):
        # recorded as meta["converged"] instead: a few-shot loop would otherwise repeat it dozens of times
        warnings.simplefilter("ignore", ConvergenceWarning)
        solver.fit(Xs, y)
    coef = np.asarray(solver.coef_, np.float64)
    intercept = np.asarray(solver.intercept_, np.float64)
    if coef.shape[0] == 1 and classes.size == 2:
        # sklearn keeps one row for two classes; ±z/2 under a softmax is exactly sigmoid(z), so every
        # probe is predicted the same way (softmax over one row per class)
        coef = np.vstack([-coef[0] / 2, coef[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    n_iter = int(np.max(solver.n_iter_))
    info = {"C": float(C), **({"C_fit": C_fit} if C_fit != float(C) else {}), "penalty": penalty,
            "max_iter": int(max_iter), "sparse_input": bool(sparse),
            "n_train": len(y), "n_iter": n_iter, "converged": n_iter < max_iter, **(meta or {})}
    # C-contiguous float64 like the arrays safetensors loads back: a different memory layout sends the
    # matmul down another BLAS path and the loaded probe would differ in the last bit
    c = np.ascontiguousarray
    return LinearProbe(c(coef, np.float64), c(intercept, np.float64), c(mean, np.float64), c(scale, np.float64),
                       np.asarray(solver.classes_, np.int64), info)
