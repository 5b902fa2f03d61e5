"""Linear probes in scikit-learn's estimator shape (fit / predict / predict_proba / score / transform).

Every probe ends with a weight vector `coef_` and bias `intercept_` in the raw activation space, and a
unit `direction_` (coef_ / |coef_|) that `transform` projects onto and steering adds. Classifiers also
keep `class_means_` ([mean of label 0, mean of label 1]) and `mean_gap_`, the class-mean difference
measured along `direction_`: Marks & Tegmark scale interventions to that gap.

- `LogisticProbe`: L2 logistic regression on centred activations divided by one global scale (per-
  feature standardisation would inflate the noisy low-variance dimensions and bend the direction).
- `MassMeanProbe`: the difference of class means mu1 - mu0, thresholded halfway between the means; with
  `whiten=True` the "iid" version of Geometry of Truth, pinv(Sigma) (mu1 - mu0) with Sigma the
  within-class covariance (Fisher's discriminant).
- `RidgeProbe`: ridge regression for continuous targets.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from interp.errors import InterpError


def _as_array(X) -> np.ndarray:
    if hasattr(X, "detach"):
        X = X.detach().cpu().numpy()
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not len(X):
        raise InterpError(f"activations must be a non-empty [n_samples, d_model] array, got shape {X.shape}")
    return X


def _check_xy(X, y) -> tuple[np.ndarray, np.ndarray]:
    X = _as_array(X)
    y = np.asarray(y.detach().cpu().numpy() if hasattr(y, "detach") else y).reshape(-1)
    if len(y) != len(X):
        raise InterpError(f"{len(X)} activation rows but {len(y)} labels; pass one label per row")
    return X, y


def _scale(X: np.ndarray) -> tuple[np.ndarray, float]:
    """(training mean, one global scale: the RMS per-coordinate deviation), for well-conditioned solvers."""
    mean = X.mean(0)
    return mean, float(np.sqrt(((X - mean) ** 2).mean())) or 1.0


class LinearProbe(BaseEstimator):
    """Shared behaviour: a fitted affine map x -> x . coef_ + intercept_ and its unit direction."""

    def _finish(self, coef: np.ndarray, intercept: float):
        norm = float(np.linalg.norm(coef))
        self.coef_, self.intercept_ = coef, float(intercept)
        self.direction_ = coef / norm if norm > 0 else coef
        return self

    def decision_function(self, X) -> np.ndarray:
        return _as_array(X) @ self.coef_ + self.intercept_

    def transform(self, X) -> np.ndarray:
        """Projection of each row onto `direction_`, shape [n_samples, 1]."""
        return (_as_array(X) @ self.direction_)[:, None]


class BinaryProbe(ClassifierMixin, LinearProbe):
    """A linear classifier for labels {0, 1}; `score` is accuracy."""

    def fit(self, X, y):
        X, y = _check_xy(X, y)
        classes = np.unique(y)
        if len(classes) != 2 or not set(classes.tolist()) <= {0, 1}:
            raise InterpError(f"a probe needs labels 0 and 1 (both present); got {classes.tolist()[:5]}")
        y = y.astype(int)
        self.classes_ = np.array([0, 1])
        self.class_means_ = np.stack([X[y == 0].mean(0), X[y == 1].mean(0)])
        self._fit(X, y)
        self.mean_gap_ = float((self.class_means_[1] - self.class_means_[0]) @ self.direction_)
        return self

    def _fit(self, X: np.ndarray, y: np.ndarray) -> None:
        raise NotImplementedError

    def predict_proba(self, X) -> np.ndarray:
        p = 1.0 / (1.0 + np.exp(-np.clip(self.decision_function(X), -500, 500)))
        return np.stack([1 - p, p], axis=1)

    def predict(self, X) -> np.ndarray:
        return (self.decision_function(X) > 0).astype(int)


class LogisticProbe(BinaryProbe):
    """L2-regularised logistic regression (`C` as in scikit-learn, on globally scaled activations)."""

    def __init__(self, C: float = 1.0, max_iter: int = 2000):
        self.C = C
        self.max_iter = max_iter

    def _fit(self, X, y):
        from sklearn.linear_model import LogisticRegression

        mean, scale = _scale(X)
        lr = LogisticRegression(C=self.C, max_iter=self.max_iter).fit((X - mean) / scale, y)
        coef = lr.coef_[0] / scale
        self._finish(coef, lr.intercept_[0] - coef @ mean)


class MassMeanProbe(BinaryProbe):
    """Difference of class means; `whiten=True` multiplies by the pseudo-inverse within-class covariance.

    `rtol` drops covariance eigenvalues below rtol x the largest (there are fewer rows than dimensions).
    """

    def __init__(self, whiten: bool = False, rtol: float = 1e-3):
        self.whiten = whiten
        self.rtol = rtol

    def _fit(self, X, y):
        mu0, mu1 = self.class_means_
        coef = mu1 - mu0
        if self.whiten:
            # pinv(Sigma) with Sigma = C^T C / n from the thin SVD of the centred rows C = U S V^T:
            # Sigma = V (S^2 / n) V^T, which costs n^2 d instead of d^3 when there are fewer rows than dims
            centred = np.concatenate([X[y == 0] - mu0, X[y == 1] - mu1])
            _, s, vt = np.linalg.svd(centred, full_matrices=False)
            eig = s ** 2 / len(X)
            keep = eig > self.rtol * eig.max()
            coef = vt[keep].T @ ((vt[keep] @ coef) / eig[keep])
        self._finish(coef, -coef @ (mu0 + mu1) / 2)


class RidgeProbe(RegressorMixin, LinearProbe):
    """Ridge regression onto a continuous target; `score` is R^2."""

    def __init__(self, alpha: float = 1.0):
        self.alpha = alpha

    def fit(self, X, y):
        from sklearn.linear_model import Ridge

        X, y = _check_xy(X, y)
        y = y.astype(np.float64)
        if np.ptp(y) == 0:
            raise InterpError("every target has the same value; a regression probe needs varied targets")
        mean, scale = _scale(X)
        ridge = Ridge(alpha=self.alpha).fit((X - mean) / scale, y)
        coef = ridge.coef_ / scale
        return self._finish(coef, ridge.intercept_ - coef @ mean)

    def predict(self, X) -> np.ndarray:
        return self.decision_function(X)


PROBES = {
    "logistic": LogisticProbe,
    "mass-mean": MassMeanProbe,
    "mass-mean-iid": lambda: MassMeanProbe(whiten=True),
    "ridge": RidgeProbe,
}


def make_probe(method: str) -> LinearProbe:
    """A fresh, unfitted probe by method name."""
    from interp.errors import suggest

    if method not in PROBES:
        raise InterpError(f"unknown probe method {method!r}{suggest(method, PROBES)}; use one of {', '.join(PROBES)}")
    return PROBES[method]()
