"""Bootstrap intervals of the sample-quality figures, read from the per-sample products of the test stage.

A figure of a generated set against the real set is a function of two index arrays (generated ids, real ids); the
bootstrap (``stats``) resamples both. Two methods sampled with the same ids and seeds are compared *paired*: each
resample draws one set of ids for both, and the interval is that of the difference. With several training seeds,
the hierarchical bootstrap draws seeds, then ids within each (``stats.hierarchical_bootstrap``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from ..stats import Interval, bootstrap, hierarchical_bootstrap
from .kernel_distance import kd_name
from .products import quality_from_products


def _counts(idx: np.ndarray, n: int) -> np.ndarray:
    """``(B, m)`` resampled ids of a set of ``n`` -> ``(B, n)`` how often each row was drawn."""
    idx = np.atleast_2d(idx)
    flat = (idx + n * np.arange(len(idx))[:, None]).ravel()
    return np.bincount(flat, minlength=len(idx) * n).reshape(len(idx), n).astype(np.float64)


def _moments(x: torch.Tensor, c: np.ndarray, chunk: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of counts ``c (B, n)``: the mean ``(B, D)`` and covariance ``(B, D, D)`` of the drawn rows of ``x``
    (float64; a row drawn k times counts k times; unbiased, as ``products`` computes them)."""
    c = torch.from_numpy(c)
    m = c.sum(dim=1)
    mu = c @ x / m[:, None]
    second = torch.cat([torch.matmul(x.T[None] * c[b:b + chunk, None, :], x) for b in range(0, len(c), chunk)])
    return mu, (second - m[:, None, None] * mu[:, :, None] * mu[:, None, :]) / (m - 1)[:, None, None]


def _sqrtm_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(a)
    return (v * w.clamp_min(0).sqrt()[..., None, :]) @ v.transpose(-1, -2)


def _digest(*arrays: np.ndarray) -> bytes:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.digest()


_REAL_PARTS: dict = {}  # (real features, drawn real ids, moments?) -> counts and moments: the same draws recur


def _real_part(real: dict, ri: np.ndarray, moments: bool):
    """Draw counts of the real ids, and for the Fréchet distance their moments and the covariances' square roots;
    kept for the last few draws: every figure of every set is bootstrapped with the same seeded draws of real ids."""
    x = np.asarray(real["features"], dtype=np.float64)
    key = (_digest(x, np.asarray(ri)), moments)
    if key not in _REAL_PARTS:
        c = _counts(ri, len(x))
        part = None
        if moments:
            mu, cov = _moments(torch.from_numpy(x), c)
            part = (mu, cov, _sqrtm_psd(cov))
        while len(_REAL_PARTS) >= 8:
            _REAL_PARTS.pop(next(iter(_REAL_PARTS)))
        _REAL_PARTS[key] = (c, part)
    return _REAL_PARTS[key]


class _Vectorised:
    """The figures of ``(B, m)`` resampled ids at once, from draw counts: Fréchet distance (``tr sqrt(S_r S_g)`` as
    the trace of ``sqrt(S_r^1/2 S_g S_r^1/2)``, which has the same eigenvalues), the kernel distance's unbiased
    ``MMD^2`` (``sum_{a != b} k(x_a, x_b) = c^T K c - c . diag K`` over drawn positions), judge accuracy and score.
    The real set's part is computed once per draw of real ids and shared by the sets compared on it."""

    def __init__(self, metric: str, settings: dict):
        self.metric, self.fd = metric, settings.get("fd_name", "fd_judge")
        self._real: tuple = (None, None, None)  # (real, ri, its part): held, so the same object is the same draw
        self._kernels: dict = {}

    @staticmethod
    def supports(metric: str, settings: dict) -> bool:
        fd = settings.get("fd_name", "fd_judge")
        return metric in (fd, kd_name(fd), "judge_accuracy", "judge_score")

    def _real_part(self, real: dict, ri: np.ndarray):
        if self._real[0] is not real or self._real[1] is not ri:
            self._real = (real, ri, _real_part(real, ri, self.metric == self.fd))
        return self._real[2]

    def __call__(self, generated: dict, real: dict, gi: np.ndarray, ri: np.ndarray) -> np.ndarray:
        cr, part = self._real_part(real, ri) if self.metric in (self.fd, kd_name(self.fd)) else (None, None)
        g = np.asarray(generated["features"], dtype=np.float64)
        cg = _counts(gi, len(g))
        if self.metric == self.fd:
            mu_r, cov_r, root_r = part
            mu_g, cov_g = _moments(torch.from_numpy(g), cg)
            inner = torch.linalg.eigvalsh(root_r @ cov_g @ root_r)
            trace = torch.diagonal(cov_r, dim1=1, dim2=2).sum(1) + torch.diagonal(cov_g, dim1=1, dim2=2).sum(1)
            return (((mu_r - mu_g) ** 2).sum(1) + trace - 2 * inner.clamp_min(0).sqrt().sum(1)).numpy()
        if self.metric == kd_name(self.fd):
            key = (id(generated), id(real))
            if key not in self._kernels:
                r, d = np.asarray(real["features"], dtype=np.float64), g.shape[1]
                self._kernels[key] = (generated, real, *((a @ b.T / d + 1.0) ** 3 for a, b in ((g, g), (r, r), (g, r))))
            _, _, kgg, krr, kgr = self._kernels[key]

            def within(k, c):
                m = c.sum(1)
                return (np.einsum("bi,ij,bj->b", c, k, c) - c @ np.diag(k)) / (m * (m - 1))
            cross = np.einsum("bi,ij,bj->b", cg, kgr, cr) / (cg.sum(1) * cr.sum(1))
            return within(kgg, cg) + within(krr, cr) - 2 * cross
        logits = np.asarray(generated["logits"], dtype=np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        m = cg.sum(1)
        if self.metric == "judge_accuracy":
            return cg @ (logits.argmax(1) == np.asarray(generated["labels"])).astype(np.float64) / m
        p = np.exp(logp)
        marginal = cg @ p / m[:, None]
        entropy = -(marginal * np.log(np.where(marginal > 0, marginal, 1.0))).sum(1)
        return np.exp(np.clip(entropy + cg @ (p * logp).sum(1) / m, 0, None))


def _figure(metric: str, settings: dict):
    """The figure on ``(B, m)`` resampled ids: ``of(generated, real, gi, ri) -> (B,)`` values."""
    if _Vectorised.supports(metric, settings):
        return _Vectorised(metric, settings)

    def of(generated: dict, real: dict, gi: np.ndarray, ri: np.ndarray) -> np.ndarray:
        return np.array([quality_from_products(generated, real, g, r, metrics=[metric], **settings)[metric]
                         for g, r in zip(np.atleast_2d(gi), np.atleast_2d(ri))])
    return of


def _check_paired(a: dict, b: dict) -> None:
    if len(a["ids"]) != len(b["ids"]) or not np.array_equal(np.asarray(a["ids"]), np.asarray(b["ids"])):
        raise ValueError("a paired comparison needs the same sample ids in both sets (sampled with the same ids and "
                         "seeds); these differ")
    if not np.array_equal(np.asarray(a["labels"]), np.asarray(b["labels"])):
        raise ValueError("a paired comparison needs the same label per sample id in both sets; these differ")


def metric_interval(generated: dict, real: dict, metric: str, *, num_resamples: int = 1000, seed: int = 0,
                    level: float = 0.95, **settings) -> Interval:
    """The interval of one figure (e.g. ``fd_digits``) of a generated set, resampling generated and real ids.
    ``settings``: as ``metrics_table.json``'s ``settings`` (``quality_from_products``'s keywords)."""
    of = _figure(metric, settings)
    return bootstrap(lambda gi, ri: of(generated, real, gi, ri), (len(generated["labels"]), len(real["labels"])),
                     num_resamples=num_resamples, seed=seed, level=level, vectorized=True)


def paired_metric_interval(generated_a: dict, generated_b: dict, real: dict, metric: str, *,
                           num_resamples: int = 1000, seed: int = 0, level: float = 0.95, **settings) -> Interval:
    """The interval of ``metric(a) - metric(b)`` for two sets with the same sample ids: one resample of ids serves
    both (and one of real ids)."""
    _check_paired(generated_a, generated_b)
    of = _figure(metric, settings)
    return bootstrap(lambda gi, ri: of(generated_a, real, gi, ri) - of(generated_b, real, gi, ri),
                     (len(generated_a["labels"]), len(real["labels"])), num_resamples=num_resamples, seed=seed,
                     level=level, vectorized=True)


def _axes(sizes: list[tuple[int, int]], resample_real: bool):
    """The resampled axes, and a function giving the real ids of a draw: drawn, or all of them (held fixed)."""
    if resample_real:
        return sizes, lambda s, gi, *ri: ri[0]
    return [(n,) for n, _ in sizes], lambda s, gi, *ri: np.broadcast_to(np.arange(sizes[s][1]), (len(gi), sizes[s][1]))


def hierarchical_metric_interval(per_seed: Sequence[tuple[dict, dict | None, dict]], metric: str, *,
                                 num_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                                 method: str = "seed_t", resample_real: bool = True, **settings) -> Interval:
    """Over training seeds, then samples: ``per_seed[s] = (generated_a, generated_b or None, real)`` of the models of
    seed s; the figure of ``a``, or the paired difference ``a - b``, averaged over seeds (``stats``' hierarchical
    bootstrap; ``method`` as there). ``resample_real=False`` holds the real set fixed (every method is graded
    against the same one: the interval is then that of drawing other samples from the same models)."""
    of = _figure(metric, settings)
    for a, b, _ in per_seed:
        if b is not None:
            _check_paired(a, b)
    sizes, real_ids = _axes([(len(a["labels"]), len(real["labels"])) for a, _, real in per_seed], resample_real)

    def value(s: int, gi: np.ndarray, *ri: np.ndarray) -> np.ndarray:
        a, b, real = per_seed[s]
        r = real_ids(s, gi, *ri)
        return of(a, real, gi, r) - (of(b, real, gi, r) if b is not None else 0.0)

    return hierarchical_bootstrap(value, sizes, num_resamples=num_resamples, seed=seed, level=level, method=method,
                                  vectorized=True)


def contrast_interval(per_seed: Sequence[tuple[Mapping[str, dict], dict]], metric: str,
                      combine: Callable | Mapping[str, Callable], *, num_resamples: int = 1000, seed: int = 0,
                      level: float = 0.95, method: str = "seed_t", resample_real: bool = True,
                      **settings) -> Interval | dict[str, Interval]:
    """Over training seeds, then sample ids: ``per_seed[s] = ({name: generated set}, real)`` with the sets of a seed
    sampled with the same ids; the statistic is ``combine({name: the figure of that set on the drawn ids})``, every set
    seeing the same drawn ids (paired). ``combine`` works elementwise on arrays of resamples: a difference
    (``v['a'] - v['b']``) or, e.g., the smaller of two differences (``np.minimum``: both must exceed 0 for its
    interval to). One seed: the bootstrap over samples. A mapping of combines gives one interval each, from the same
    draws (each set's figure computed once per draw). ``resample_real``: as in hierarchical_metric_interval."""
    of = _figure(metric, settings)
    for sets, _ in per_seed:
        first = next(iter(sets.values()))
        for other in sets.values():
            _check_paired(first, other)
    figures: dict = {}
    sizes, real_ids = _axes([(len(next(iter(sets.values()))["labels"]), len(real["labels"]))
                             for sets, real in per_seed], resample_real)

    def value_of(fn: Callable) -> Callable:
        def value(s: int, gi: np.ndarray, *ri: np.ndarray) -> np.ndarray:
            key = (s, _digest(gi, *ri))
            if key not in figures:
                sets, real = per_seed[s]
                r = real_ids(s, gi, *ri)
                figures[key] = {name: of(g, real, gi, r) for name, g in sets.items()}
            return np.asarray(fn(figures[key]))
        return value

    options = {"num_resamples": num_resamples, "seed": seed, "level": level, "method": method, "vectorized": True}
    if callable(combine):
        return hierarchical_bootstrap(value_of(combine), sizes, **options)
    return {name: hierarchical_bootstrap(value_of(fn), sizes, **options) for name, fn in combine.items()}


def keep_ids(products: dict, ids: Sequence[int]) -> dict:
    """The rows of a set of per-sample products whose sample id is in ``ids`` (in id order): to compare two sets on
    the ids they share, or on one half of them."""
    mask = np.isin(np.asarray(products["ids"]), np.asarray(ids))
    return {k: (v[mask] if isinstance(v, np.ndarray) and v.ndim and len(v) == len(mask) else v)
            for k, v in products.items()}
