"""The two geometric measures of LLM-Microscope (Razzhigaev et al. 2025), as plain tensor functions.

- Token-level nonlinearity of a layer: centre the hidden states before (X) and after (Y) the layer over a set
  of tokens, scale each matrix to unit Frobenius norm, find the least-squares map A (X A ~ Y), and take each
  token's squared residual ||x_i A - y_i||^2. Their sum over the fitted tokens is 1 - linearity, the layer's
  linearity score of "Your Transformer is Secretly Linear" (in [0, 1]: the residual of a least-squares fit is
  at most ||Y||^2 = 1). Per-token values are reported times the number of fitted tokens, so that their mean
  over the fitted tokens is 1 - linearity and a value above 1 means "less linear than the average token".
- Intrinsic dimension: the two-nearest-neighbour estimator (Facco et al. 2017) as the paper's toolkit runs it.
"""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class LinearFit:
    """The best linear map between centred, unit-Frobenius-norm hidden states of two layers.

    `x_mean`, `y_mean` [d] and `x_scale`, `y_scale` (Frobenius norms of the centred matrices) are those of the
    fitted tokens; `A` [d, d] maps normalised x to normalised y; `n` is the number of fitted tokens and
    `linearity` is 1 - the squared residual of the fit over them.
    """

    x_mean: torch.Tensor
    x_scale: float
    y_mean: torch.Tensor
    y_scale: float
    A: torch.Tensor
    n: int
    linearity: float

    def errors(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-token nonlinearity [N] of states x, y [N, d] under this fit (times `n`, see the module doc)."""
        x = (x.double() - self.x_mean) / self.x_scale
        y = (y.double() - self.y_mean) / self.y_scale
        return (x @ self.A - y).square().sum(-1) * self.n


def fit_linear(x: torch.Tensor, y: torch.Tensor) -> LinearFit:
    """Least-squares linear map from x [N, d] to y [N, d] after centring and unit-Frobenius scaling (float64)."""
    if x.shape[0] < 2:
        raise ValueError("a linear fit needs at least two tokens")
    x, y = x.double(), y.double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    x_scale = float(xc.norm()) or 1.0
    y_scale = float(yc.norm()) or 1.0
    xn, yn = xc / x_scale, yc / y_scale
    A = torch.linalg.pinv(xn.T @ xn, hermitian=True) @ (xn.T @ yn)  # normal equations: N d^2, not an SVD of x
    return LinearFit(x_mean, x_scale, y_mean, y_scale, A, x.shape[0], float(1.0 - (xn @ A - yn).square().sum()))


def _two_nearest(points: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances [N] from each point to its nearest and second-nearest other point (rows in chunks)."""
    first, second = [], []
    for start in range(0, len(points), chunk):
        block = torch.cdist(points[start:start + chunk], points)
        rows = torch.arange(block.shape[0])
        block[rows, rows + start] = float("inf")  # not its own neighbour
        two = block.topk(2, dim=1, largest=False).values
        first.append(two[:, 0])
        second.append(two[:, 1])
    return torch.cat(first), torch.cat(second)


def two_nn_dimension(points: torch.Tensor, fit_fraction: float = 0.2, eps: float = 1e-8) -> float:
    """Intrinsic dimension of points [N, d] by the two-NN estimator, fitted as the LLM-Microscope toolkit fits it.

    Points are centred and scaled to unit mean norm; mu = r2 / r1 is the ratio of each point's second- to
    first-neighbour distance. Under local uniformity P(mu <= m) = 1 - m^-D, so -log(1 - F(mu)) = D log mu: sort
    mu, set F to the empirical CDF (i / N) and fit a line through the origin over the smallest `fit_fraction`
    of the mu values (the toolkit's choice: 1/5). A repeated vector (a repeated token in the embedding layer)
    counts once, and points left with r1 < eps or r1 == r2 are dropped, from the CDF too: the toolkit keeps
    them at the lowest ranks of the CDF, which inflates the estimate where duplicates are common.
    """
    if not 0 < fit_fraction <= 1:
        raise ValueError("fit_fraction must be in (0, 1]")
    x = torch.unique(points.double(), dim=0)
    x = x - x.mean(0)
    x = x / x.norm(dim=1).mean().clamp_min(eps)
    r1, r2 = (r.double() for r in _two_nearest(x.float()))  # float32 distances: ratios need no more
    mu = r2[r1 >= eps] / r1[r1 >= eps]
    mu = mu[mu > 1 + eps].sort().values
    n = len(mu)
    used = min(int(n * fit_fraction), n - 1)  # F = 1 at the last point
    log_mu, target = mu.log()[:used], -torch.log1p(-torch.arange(1, used + 1, dtype=torch.float64) / n)
    if used < 2:
        return float("nan")
    return float((log_mu * target).sum() / (log_mu * log_mu).sum())
