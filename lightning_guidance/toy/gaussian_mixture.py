"""A class-labelled Gaussian mixture with exact density, score and class posterior at every VP noise level.

``p(x) = sum_m w_m N(x; mu_m, Sigma_m)``; each component belongs to one class. Noising a mixture keeps it a
mixture (docs/math.md §6): under ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` component ``m`` becomes
``N(sqrt(abar) mu_m, abar Sigma_m + (1 - abar) I)``. With ``Sigma_m = Q_m diag(lam_m) Q_m^T`` the noised
covariance is ``Q_m diag(abar lam_m + 1 - abar) Q_m^T``, so one eigendecomposition made up front serves every
noise level, and a batch whose rows sit at different ``abar`` costs no more than one at a single level.

Everything is computed in float64; results come back in the input's floating dtype (float64 for integer input).
Class ids: ``y`` in ``[0, num_classes)`` selects ``p(x | y)``; ``y = None`` or the null id ``num_classes``
selects the unconditional ``p(x)`` (the project's null-class convention).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

# rows per chunk are chosen so that one (rows, components, dim) float64 tensor stays near 16 MiB
_CHUNK_ELEMENTS = 1 << 21


class GaussianMixture:
    """Mixture of full-covariance Gaussians whose components carry class labels.

    Args:
        means: (M, D) component means.
        covs: (M, D, D) symmetric positive definite covariances.
        weights: (M,) non-negative weights (normalised here).
        component_labels: (M,) integer class of each component.
        num_classes: defaults to ``max(component_labels) + 1``; a class may own no component (its posterior is 0).
    """

    def __init__(self, means: Tensor, covs: Tensor, weights: Tensor, component_labels: Tensor,
                 num_classes: int | None = None):
        means = torch.as_tensor(means, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        weights = torch.as_tensor(weights, dtype=torch.float64)
        labels = torch.as_tensor(component_labels, dtype=torch.int64)
        if means.ndim != 2:
            raise ValueError(f"means must have shape (M, D), got {tuple(means.shape)}")
        m, d = means.shape
        if covs.shape != (m, d, d):
            raise ValueError(f"covs must have shape {(m, d, d)} to match means, got {tuple(covs.shape)}")
        if weights.shape != (m,) or labels.shape != (m,):
            raise ValueError(f"weights and component_labels must have shape ({m},), got "
                             f"{tuple(weights.shape)} and {tuple(labels.shape)}")
        if not bool((weights >= 0).all()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if int(labels.min()) < 0:
            raise ValueError("component_labels must be >= 0")
        if not torch.allclose(covs, covs.transpose(-1, -2), rtol=1e-10, atol=1e-14):
            raise ValueError("every covariance must be symmetric")
        lam, q = torch.linalg.eigh(covs)
        if not bool((lam > 0).all()):
            raise ValueError("every covariance must be positive definite (found an eigenvalue <= 0)")
        top = int(labels.max()) + 1
        self.num_classes = top if num_classes is None else int(num_classes)
        if self.num_classes < top:
            raise ValueError(f"num_classes={num_classes} is smaller than the largest component label + 1 ({top})")

        self.means, self.covs, self.component_labels = means, covs, labels
        self.weights = weights / weights.sum()
        self._eigvals, self._eigvecs = lam, q  # covs = Q diag(lam) Q^T
        # log weight table, one row per class plus a last row for the unconditional mixture (the null id)
        onehot = torch.nn.functional.one_hot(labels, self.num_classes).T.to(torch.float64)  # (K, M)
        self.class_weights = onehot @ self.weights  # p(y), (K,)
        cond = onehot * self.weights / self.class_weights.clamp_min(1e-300)[:, None]
        table = torch.cat([cond, self.weights[None]])  # (K + 1, M), zero off-class
        self._log_weights = table.log()
        self._cdfs = table.cumsum(dim=1)
        positive = table > 0
        self._last_component = self.num_components - 1 - positive.flip(1).to(torch.int64).argmax(dim=1)

    # ---- basic properties ---------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def mean(self) -> Tensor:
        """Mixture mean ``sum_m w_m mu_m`` (D,)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Mixture covariance ``sum_m w_m (Sigma_m + mu_m mu_m^T) - mean mean^T`` (D, D)."""
        second = torch.einsum("m,mij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        mu = self.mean()
        return second - torch.outer(mu, mu)

    # ---- noising --------------------------------------------------------------------------------
    def noised(self, abar: float | Tensor) -> "GaussianMixture":
        """Law of ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` (scalar abar).

        Means ``* sqrt(abar)``, covariances ``abar Sigma + (1 - abar) I``.
        """
        a = float(abar)
        if not 0 < a <= 1:
            raise ValueError(f"abar must lie in (0, 1], got {a}")
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.means * math.sqrt(a), self.covs * a + (1 - a) * eye, self.weights,
                               self.component_labels, num_classes=self.num_classes)

    # ---- sampling -------------------------------------------------------------------------------
    def sample(self, n: int, labels: Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` draws from ``p(x, y)`` (``labels=None``) or ``p(x | y = labels[i])``: (x float32 (n, D), y int64 (n,)).

        Draws one uniform per sample to pick the component (inverse CDF), then one standard normal vector;
        the result depends only on the (CPU) generator's state. Tensors come back on the CPU.
        """
        if labels is not None:
            labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
            if len(labels) != n:
                raise ValueError(f"labels must have n={n} entries, got {len(labels)}")
            self._check_classes(labels, allow_null=False)
            if bool((self.class_weights[labels] == 0).any()):
                raise ValueError("cannot sample a class that owns no mixture component")
        u = torch.rand(n, dtype=torch.float64, generator=generator)
        rows = torch.full((n,), self.num_classes, dtype=torch.int64) if labels is None else labels
        comp = torch.empty(n, dtype=torch.int64)
        for r in rows.unique().tolist():
            sel = rows == r
            # right=True never lands on a zero-weight component; the clamp only catches u rounding onto the total
            idx = torch.searchsorted(self._cdfs[r], u[sel] * self._cdfs[r, -1], right=True)
            comp[sel] = idx.clamp_max(int(self._last_component[r]))
        noise = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        scale = self._eigvecs[comp] * self._eigvals[comp].sqrt()[:, None, :]  # Q diag(sqrt lam): a square root of Sigma
        x = self.means[comp] + torch.einsum("nij,nj->ni", scale, noise)
        return x.to(torch.float32), self.component_labels[comp].clone()

    # ---- exact density, score, posterior ----------------------------------------------------------
    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """``log p(x)`` or, per sample, ``log p(x | y)`` (N,)."""
        return self._evaluate(x, None, y, want_score=False)[0]

    def score(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Analytic ``∇_x log p(x [| y]) = -sum_m r_m(x) Sigma_m^{-1} (x - mu_m)``, responsibilities r (N, D)."""
        return self._evaluate(x, None, y, want_score=True)[1]

    def log_class_posterior(self, x: Tensor) -> Tensor:
        """Bayes: ``log p(y | x) = log sum_{m in y} w_m N_m(x) - log p(x)`` (N, K)."""
        return self._log_posterior(x, None)

    def class_posterior(self, x: Tensor) -> Tensor:
        return self.log_class_posterior(x).exp()

    def noised_log_prob(self, x_t: Tensor, abar: Tensor, y: Tensor | None = None) -> Tensor:
        """``log p_t(x_t [| y])`` where row i is at noise level ``abar[i]`` (N,)."""
        return self._evaluate(x_t, abar, y, want_score=False)[0]

    def noised_score(self, x_t: Tensor, abar: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact ``∇ log p_t(x_t [| y])`` with a per-row ``abar`` (N,); equals ``noised(a).score`` row by row."""
        return self._evaluate(x_t, abar, y, want_score=True)[1]

    def noised_log_posterior(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """Exact ``log p_t(y | x_t)`` with a per-row ``abar`` (N, K); differentiable in ``x_t`` by autograd."""
        return self._log_posterior(x_t, abar)

    # ---- internals ------------------------------------------------------------------------------
    def _check_classes(self, y: Tensor, allow_null: bool) -> None:
        top = self.num_classes + (1 if allow_null else 0)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= top):
            raise ValueError(f"class ids must lie in 0..{top - 1} for this mixture, got {sorted(set(y.tolist()))[:8]}")

    def _prepare(self, x: Tensor, abar: Tensor | None) -> tuple[Tensor, Tensor]:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (N, {self.dim}), got {tuple(x.shape)}")
        x64 = x.to(torch.float64)
        if abar is None:
            return x64, torch.ones(len(x), dtype=torch.float64, device=x.device)
        abar = torch.as_tensor(abar, dtype=torch.float64, device=x.device).detach()
        abar = abar.expand(len(x)) if abar.ndim == 0 else abar.reshape(-1)
        if len(abar) != len(x):
            raise ValueError(f"abar must be a scalar or have one entry per row ({len(x)}), got {len(abar)}")
        if not bool(((abar > 0) & (abar <= 1)).all()):
            raise ValueError("abar must lie in (0, 1]")
        return x64, abar

    def _component_terms(self, x: Tensor, abar: Tensor, want_score: bool) -> tuple[Tensor, Tensor | None]:
        """Per row and component: ``log N(x; sqrt(abar) mu, abar Sigma + (1 - abar) I)`` (N, M) and, if asked,
        ``Sigma_t^{-1} (x - mu_t)`` expressed in the eigenbasis (N, M, D) divided by the noised eigenvalues."""
        dev = x.device
        means, lam, q = self.means.to(dev), self._eigvals.to(dev), self._eigvecs.to(dev)
        lam_t = abar[:, None, None] * lam + (1 - abar)[:, None, None]  # (N, M, D)
        diff = x[:, None, :] - abar.sqrt()[:, None, None] * means  # (N, M, D)
        z = torch.einsum("nmd,mde->nme", diff, q)  # coordinates in each component's eigenbasis
        log_n = -0.5 * (self.dim * math.log(2 * math.pi) + lam_t.log().sum(-1) + (z * z / lam_t).sum(-1))
        return log_n, (z / lam_t if want_score else None)

    def _evaluate(self, x: Tensor, abar: Tensor | None, y: Tensor | None,
                  want_score: bool) -> tuple[Tensor, Tensor | None]:
        x64, abar = self._prepare(x, abar)
        rows = self._rows(y, len(x), x.device)
        log_w_all = self._log_weights.to(x.device)
        out_dtype = x.dtype if x.is_floating_point() else torch.float64
        log_ps, scores = [], []
        step = max(1, _CHUNK_ELEMENTS // (self.num_components * self.dim))
        for s in range(0, len(x), step):
            sl = slice(s, s + step)
            log_n, w_z = self._component_terms(x64[sl], abar[sl], want_score)
            joint = log_w_all[rows[sl]] + log_n  # (n, M), -inf for components outside the class
            log_p = torch.logsumexp(joint, dim=1)
            log_ps.append(log_p)
            if want_score:
                resp = torch.softmax(joint, dim=1)
                scores.append(-torch.einsum("nm,nme,mde->nd", resp, w_z, self._eigvecs.to(x.device)))
        log_p = torch.cat(log_ps).to(out_dtype)
        score = torch.cat(scores).to(out_dtype) if want_score else None
        return log_p, score

    def _rows(self, y: Tensor | None, n: int, device: torch.device) -> Tensor:
        if y is None:
            return torch.full((n,), self.num_classes, dtype=torch.int64, device=device)
        y = torch.as_tensor(y, device=device)
        if y.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"class labels must be an integer tensor, got {y.dtype}")
        y = y.to(torch.int64).expand(n) if y.ndim == 0 else y.to(torch.int64).reshape(-1)
        if len(y) != n:
            raise ValueError(f"y must have one class id per row ({n}), got {len(y)}")
        self._check_classes(y, allow_null=True)
        real = y[y < self.num_classes]
        if bool((self.class_weights.to(device)[real] == 0).any()):
            raise ValueError("p(x | y) is undefined for a class that owns no mixture component")
        return y

    def _log_posterior(self, x: Tensor, abar: Tensor | None) -> Tensor:
        x64, abar = self._prepare(x, abar)
        out_dtype = x.dtype if x.is_floating_point() else torch.float64
        labels = self.component_labels.to(x.device)
        log_w = self._log_weights[-1].to(x.device)
        step = max(1, _CHUNK_ELEMENTS // (self.num_components * self.dim))
        parts = []
        for s in range(0, len(x), step):
            sl = slice(s, s + step)
            joint = log_w + self._component_terms(x64[sl], abar[sl], want_score=False)[0]  # (n, M)
            # log p(x, y=k) = logsumexp over the components of class k; a class with no component gets -inf
            empty = torch.full((joint.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
            per_class = torch.stack([torch.logsumexp(joint[:, labels == k], dim=1) if bool((labels == k).any())
                                     else empty for k in range(self.num_classes)], dim=1)
            parts.append(per_class - torch.logsumexp(joint, dim=1, keepdim=True))
        return torch.cat(parts).to(out_dtype)
