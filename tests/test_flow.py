"""The flow math and the neighbour search against independent references: closed forms (straight paths, a linear
ODE's matrix exponential), sklearn's brute-force NearestNeighbors, and the exact top-k for IVF recall."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from sklearn.datasets import load_digits
from sklearn.neighbors import NearestNeighbors

from lightning_guidance.flow import (IndexSettings, NeighbourCache, draw_neighbour_and_time, dopri5, euler,
                                     flow_matching_loss, integrate, interpolate, json_digest, sample_keys,
                                     top_k_neighbours, velocity_target)
from lightning_guidance.flow.neighbours import recall_at_k
from lightning_guidance.nets import MLPDenoiser


def _digits(split: int = 1437):
    x, y = load_digits(return_X_y=True)
    x = (x / 8.0 - 1.0).astype(np.float32)  # the DigitsDataModule's pixel scale
    return x[:split], y[:split], x[split:], y[split:]


# ---- neighbour search ----------------------------------------------------------------------------------------
def test_exact_search_equals_sklearn_brute_force():
    rng = np.random.default_rng(0)
    real, queries = rng.normal(size=(2000, 32)).astype(np.float32), rng.normal(size=(300, 32)).astype(np.float32)
    distances, indices = top_k_neighbours(queries, real, k=10)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=10, algorithm="brute").fit(real).kneighbors(queries)
    np.testing.assert_allclose(np.sqrt(np.maximum(distances, 0)), ref_dist, rtol=1e-4, atol=1e-4)
    # ties aside: an index may differ only where two neighbours are at the same distance
    differ = indices != ref_idx
    gaps = np.abs(np.diff(ref_dist, axis=1))
    tied = np.zeros_like(differ)
    tied[:, :-1] |= gaps < 1e-5
    tied[:, 1:] |= gaps < 1e-5
    assert not (differ & ~tied).any()
    assert differ.sum() <= 2  # continuous random data: ties are (almost) impossible


def test_ivf_reaches_its_stated_recall_on_the_digits():
    """configs/digits/flow.yaml states: index ivf, nlist 32, nprobe 8 -> recall@20 >= 0.99 on the digits."""
    real, _, queries, _ = _digits()
    _, exact = top_k_neighbours(queries, real, 20)
    _, approx = top_k_neighbours(queries, real, 20, IndexSettings("ivf", nlist=32, nprobe=8))
    recall = recall_at_k(approx, exact)
    assert recall >= 0.99, recall
    _, coarse = top_k_neighbours(queries, real, 20, IndexSettings("ivf", nlist=32, nprobe=1))
    assert recall_at_k(coarse, exact) < recall  # the measurement can tell: fewer probes, lower recall


def test_same_class_search_never_returns_another_class_and_is_exact_within_the_class():
    real, real_y, queries, query_y = _digits()
    distances, indices = top_k_neighbours(queries, real, 15, query_labels=query_y, real_labels=real_y,
                                          same_class=True)
    assert (real_y[indices] == query_y[:, None]).all()
    for c in (0, 7):  # the digits' integer pixels tie often: compare distances, not indices
        members = np.nonzero(real_y == c)[0]
        ref = NearestNeighbors(n_neighbors=15, algorithm="brute").fit(real[members])
        ref_dist, _ = ref.kneighbors(queries[query_y == c])
        np.testing.assert_allclose(np.sqrt(np.maximum(distances[query_y == c], 0)), ref_dist, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", ["dims", "k_real", "k_class", "empty_class", "bad_kind"])
def test_bad_search_inputs_are_one_clear_line(case):
    real, real_y, queries, query_y = _digits()
    with pytest.raises(ValueError) as err:
        if case == "dims":
            top_k_neighbours(queries[:, :32], real, 5)
        elif case == "k_real":
            top_k_neighbours(queries, real[:10], 20)
        elif case == "k_class":
            keep = (real_y != 3) | (np.cumsum(real_y == 3) <= 4)  # class 3 keeps 4 real samples
            top_k_neighbours(queries, real[keep], 5, query_labels=query_y, real_labels=real_y[keep], same_class=True)
        elif case == "empty_class":
            keep = real_y != 5
            top_k_neighbours(queries, real[keep], 5, query_labels=query_y, real_labels=real_y[keep], same_class=True)
        else:
            IndexSettings("hnsw")
    message = str(err.value)
    assert "\n" not in message
    expected = {"dims": "same space", "k_real": "only 10", "k_class": "class 3 has only 4", "empty_class": "class 5",
                "bad_kind": "hnsw"}[case]
    assert expected in message


def test_neighbour_cache_is_reused_for_the_same_inputs_and_never_for_other_ones(tmp_path):
    cache = NeighbourCache(tmp_path)
    calls = []

    def build(value):
        def make():
            calls.append(value)
            return np.full((3, 2), value, np.float32), np.full((3, 2), value, np.int64)
        return make

    a, b = json_digest({"real": "a"}), json_digest({"real": "b"})
    assert a != b
    d, i, reused = cache.load_or_build(a, {"real": "a"}, build(1))
    assert not reused and calls == [1]
    d, i, reused = cache.load_or_build(a, {"real": "a"}, build(99))
    assert reused and calls == [1] and (i == 1).all()
    # a table from other inputs put under b's name: detected by its recorded digest, moved aside, rebuilt
    cache.path(a).rename(cache.path(b))
    with pytest.warns(UserWarning, match="other inputs"):
        d, i, reused = cache.load_or_build(b, {"real": "b"}, build(2))
    assert not reused and (i == 2).all() and calls == [1, 2]
    assert len(list(tmp_path.glob("*.mismatch-*"))) == 1  # nothing deleted


# ---- flow math --------------------------------------------------------------------------------------------------
def test_interpolation_and_target_are_the_straight_path():
    x0, x1 = torch.randn(5, 1, 4, 4), torch.randn(5, 1, 4, 4)
    t = torch.rand(5)
    xt = interpolate(x0, x1, t)
    for b in range(5):
        torch.testing.assert_close(xt[b], t[b] * x1[b] + (1 - t[b]) * x0[b])
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(5)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(5)), x1)
    torch.testing.assert_close(velocity_target(x0, x1), x1 - x0)
    # the target is the time derivative of the path (autograd)
    tt = t.clone().requires_grad_(True)
    grad = torch.autograd.grad(interpolate(x0, x1, tt).sum(), tt)[0]
    torch.testing.assert_close(grad, (x1 - x0).flatten(1).sum(1))


def test_dopri5_and_euler_on_a_linear_field_match_the_matrix_exponential():
    torch.manual_seed(1)
    a = torch.randn(3, 3, dtype=torch.float64) * 0.7
    x0 = torch.randn(4, 3, dtype=torch.float64)
    exact = x0 @ torch.from_numpy(scipy.linalg.expm(a.numpy())).T
    field = lambda x, t: x @ a.T  # noqa: E731
    sol = dopri5(field, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(sol.x, exact, rtol=1e-8, atol=1e-8)
    assert sol.nfe > 6
    coarse, fine = euler(field, x0, 50), euler(field, x0, 400)
    assert coarse.nfe == 50 and fine.nfe == 400
    assert (fine.x - exact).abs().max() < (coarse.x - exact).abs().max() / 5  # first order: error ~ 1 / N
    time_field = lambda x, t: t[:, None].expand_as(x)  # noqa: E731 - dx/dt = t: x(1) = x0 + 1/2
    torch.testing.assert_close(dopri5(time_field, x0).x, x0 + 0.5)
    with pytest.raises(ValueError, match="unknown integrator"):
        integrate(field, x0, "rk4")
    with pytest.raises(ValueError, match="has no option rtol"):
        integrate(field, x0, "euler", rtol=1e-3)
    assert integrate(field, x0, "euler", num_steps=7).nfe == 7


def test_a_flow_trained_on_one_fixed_pair_learns_x1_minus_x0_and_lands_on_x1():
    torch.manual_seed(0)
    net = MLPDenoiser(data_dim=2, num_classes=1, hidden_dim=64, num_layers=2)
    x0, x1 = torch.tensor([[-1.0, 0.5]]), torch.tensor([[0.8, -0.3]])
    y = torch.zeros(1, dtype=torch.long)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for step in range(400):
        t = torch.rand(64)
        loss = flow_matching_loss(lambda x, tt: net(x, tt, y.expand(len(x))), x0.expand(64, 2), x1.expand(64, 2), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        t = torch.linspace(0, 1, 11)
        path = interpolate(x0.expand(11, 2), x1.expand(11, 2), t)
        v = net(path, t, y.expand(11))
        torch.testing.assert_close(v, (x1 - x0).expand(11, 2), atol=0.03, rtol=0)
        field = lambda x, tt: net(x, tt, y.expand(len(x)))  # noqa: E731
        torch.testing.assert_close(euler(field, x0, 20).x, x1, atol=0.02, rtol=0)
        torch.testing.assert_close(dopri5(field, x0, 1e-6, 1e-6).x, x1, atol=0.02, rtol=0)


def test_neighbour_draws_are_per_sample_seeded():
    seeds = torch.arange(1000)
    keys = sample_keys(seeds, torch.full((1000,), 2.0, dtype=torch.float64))
    choice, t = draw_neighbour_and_time(keys, step=7, seed=0, k=20)
    # a sample's draw does not depend on the batch it is drawn in
    sub_choice, sub_t = draw_neighbour_and_time(keys[[5, 900, 3]], step=7, seed=0, k=20)
    assert sub_choice.tolist() == choice[[5, 900, 3]].tolist() and torch.equal(sub_t, t[[5, 900, 3]])
    # it changes with the step and with the scale (the same seed recurs at every scale)
    assert (draw_neighbour_and_time(keys, 8, 0, 20)[0] != choice).float().mean() > 0.9
    other_scale = sample_keys(seeds, torch.full((1000,), 3.0, dtype=torch.float64))
    assert (draw_neighbour_and_time(other_scale, 7, 0, 20)[0] != choice).float().mean() > 0.9
    # uniform over the k neighbours and over [0, 1) (chi-square and Kolmogorov-Smirnov at the 0.1 % level)
    from scipy import stats

    many = draw_neighbour_and_time(sample_keys(torch.arange(20000), torch.zeros(20000, dtype=torch.float64)), 3, 1, 20)
    assert stats.chisquare(np.bincount(many[0].numpy(), minlength=20)).pvalue > 1e-3
    assert stats.kstest(many[1].numpy(), "uniform").pvalue > 1e-3
    assert 0 <= many[0].min() and many[0].max() < 20


def test_training_pairs_each_sample_with_a_uniform_draw_of_its_top_k_every_step(monkeypatch):
    """Zhao & Schwing 2025, App. B: "randomly select one from the top-k" nearest real samples, for each generated
    sample at each step. Observed through ``RectifiedFlowPostprocessor.training_step`` itself (the pair handed to
    the flow-matching loss), with real sample j at (j, 0) so that x1 names the chosen real sample and, through the
    sample's neighbour row, its column. Over 16 samples x 300 steps: the k = 5 columns are uniform (chi-square at the
    0.1 % level), a sample's column at one step matches the next step's about 1/k of the time, as does a sample's
    column with its neighbour's at the same step (not 1: no draw shared by a step or by a sample), and a fresh
    module (a resumed run: no state but the step) draws the very same columns. Catches: always the nearest (column
    0), one draw per step for the whole batch, one draw per sample for the whole run, a draw from a global RNG."""
    from scipy import stats

    import lightning_guidance.modules.rectified_flow as rf
    from lightning_guidance.modules.rectified_flow import RectifiedFlowPostprocessor

    n, k, real_n, steps = 16, 5, 40, 300
    rng = np.random.default_rng(0)
    neighbours = torch.from_numpy(np.stack([rng.permutation(real_n)[:k] for _ in range(n)]))
    pairs = {"real_x": torch.stack([torch.arange(real_n, dtype=torch.float32), torch.zeros(real_n)], 1),
             "neighbours": neighbours, "keys": sample_keys(torch.arange(n), torch.full((n,), 2.0, dtype=torch.float64)),
             "nearest_distance": torch.zeros(n)}
    seen = []
    original = rf.flow_matching_loss

    def recording_loss(velocity, x0, x1, t):
        seen.append(x1[:, 0].round().long().clone())
        return original(velocity, x0, x1, t)

    monkeypatch.setattr(rf, "flow_matching_loss", recording_loss)

    def columns(first_step: int, last_step: int) -> torch.Tensor:
        torch.manual_seed(first_step)  # a resumed process's global RNG is not the straight run's
        module = RectifiedFlowPostprocessor(MLPDenoiser(data_dim=2, num_classes=3, hidden_dim=8, num_layers=1), k=k)
        module._pairs = pairs
        module.log = lambda *args, **kwargs: None
        seen.clear()
        x0, y, rows = torch.zeros(n, 2), torch.zeros(n, dtype=torch.long), torch.arange(n)
        for step in range(first_step, last_step):
            module._trainer = type("StepOnly", (), {"global_step": step})()
            module.training_step((x0, y, rows), step)
        chosen = torch.stack(seen)  # (steps, n): the real sample each generated sample was paired with
        return (neighbours[None] == chosen[..., None]).int().argmax(-1)

    cols = columns(0, steps)
    assert stats.chisquare(np.bincount(cols.flatten().numpy(), minlength=k)).pvalue > 1e-3
    across_steps = (cols[1:] == cols[:-1]).float().mean().item()
    across_samples = (cols[:, 1:] == cols[:, :-1]).float().mean().item()
    assert abs(across_steps - 1 / k) < 0.05 and abs(across_samples - 1 / k) < 0.05, (across_steps, across_samples)
    assert torch.equal(columns(200, steps), cols[200:])  # the resumed run's draws
