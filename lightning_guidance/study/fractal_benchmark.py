"""Section 3: every guidance method on the 2D fractal (the seed papers' and the modern CFG variants) at every scale,
and the post-processed sets before and after the flow, scored against the exact class-conditional distribution
(``toy.exact_scores.ExactScores``), same seeds for every method; the steps are section 2's (:mod:`.fractal`). Every
score has its bootstrap interval over sample ids (``metrics.exact_intervals``; one training seed, see section 2), and
every claim is a paired effect on the same ids.
"""

from __future__ import annotations

import numpy as np

from ..io.toy_figures import BandPanel, band_grid
from ..metrics.exact_intervals import per_sample_estimate, score_estimate, seeds_estimate
from ..stats import Estimate, text
from ..toy import fractal_2d
from ..toy.exact_scores import (ExactScores, best_at_equal_wrong_class_rate, density_deciles, move_by_density_decile,
                                per_sample_scores)
from .fractal import DATA, FLOW, PRESET_FIELDS, label_of, plan, read_all
from ..io.tables import fmt, md_table
from ..launch.products import Products
from ..stats.claims import Claim, stored_effect
from .section import Section, SectionResult

#: the exact scores' settings: sliced W1 (the tables' "sliced W1") on 64 directions, seed 0
SCORING = {"seed": 0, "num_projections": 64, "p": 1}
#: the exact scores the benchmark tabulates (toy.exact_scores.ExactScores), with their column titles
SCORES = (("mean_log_density", "mean log p(x|y) ↑"), ("median_log_density", "median log p(x|y) ↑"),
          ("wrong_class_fraction", "wrong class ↓"), ("sliced_wasserstein", "sliced W1 ↓"),
          ("spread", "spread (1 = exact)"), ("recall", "recall ↑"))


def estimates(scores) -> dict:
    return {key: score_estimate([scores], key).as_json() for key, _ in SCORES}


def first_last(by_scale: dict) -> tuple[str, str]:
    scales = sorted(by_scale, key=float)
    return scales[0], scales[-1]


def analyse(products: Products, res: SectionResult) -> None:
    p = products.preset
    methods, samples, failed, flows, flows_failed, truth, labels = read_all(products)
    mixture, n_ref = fractal_2d(), p.fractal_reference_per_class
    exact = {m.key: {f"{s:g}": ExactScores(mixture, x, y, n_ref, **SCORING) for s, (x, y) in samples[m.key].items()}
             for m in methods}
    scores = {m: {s: estimates(sc) for s, sc in by_scale.items()} for m, by_scale in exact.items()}
    reference = estimates(ExactScores(mixture, truth, labels, n_ref, **SCORING))
    post, deltas, ratios = {}, [], []
    for key, (f, after, before, y) in flows.items():
        b, a = ExactScores(mixture, before, y, n_ref, **SCORING), ExactScores(mixture, after, y, n_ref, **SCORING)
        was, now = per_sample_scores(mixture, before, y), per_sample_scores(mixture, after, y)
        moves, log_p = (after.double() - before.double()).norm(dim=1), was["log_density"]
        deltas.append({k: (now[k] - was[k]).numpy() for k in now})  # per sample, after - before
        bins = density_deciles(log_p)
        ratios.append((moves[bins == 0].numpy(), moves[bins == 9].numpy()))
        post[key] = {"method": f.method, "label": label_of(methods, f.method), "scale": f"{f.scale:g}",
                     "config": FLOW, "flow_steps": p.fractal_flow_steps, "before": estimates(b),
                     "after": estimates(a), "median_move": float(moves.median()),
                     "wrong_class_change": score_estimate([a], "wrong_class_fraction", baseline=[b]).as_json(),
                     "median_move_by_density_decile": move_by_density_decile(log_p, moves)}
    cfg_scores = scores.get("cfg", {})
    budget_scale = sorted(cfg_scores, key=float)[len(cfg_scores) // 2] if cfg_scores else None
    ranking, budget = [], None
    if budget_scale is not None:
        budget = cfg_scores[budget_scale]["wrong_class_fraction"]["value"]
        values = {m.key: {s: {k: e["value"] for k, e in sc.items()} for s, sc in scores[m.key].items()}
                  for m in methods if m.key in ("cfg", "cg") or m.family == "variant"}
        ranking = [{"method": m, "label": label_of(methods, m), "scale": s, **scores[m][s]}
                   for m, s, _ in best_at_equal_wrong_class_rate(values, budget)]
    res.numbers = {"samples_per_class": p.fractal_samples_per_class, "reference_per_class": n_ref, "scoring": SCORING,
                   "exact_samples": reference,
                   "methods": {m.key: {"label": m.label, "family": m.family, "scales": scores[m.key]} for m in methods},
                   "methods_failed": failed, "postprocessed": post, "postprocessed_failed": flows_failed,
                   "equal_wrong_class": {"cfg_scale": budget_scale, "ranking": ranking},
                   "claims": claim_effects(exact, {m.key: m.label for m in methods}, deltas, ratios)}
    header = ["method", "scale", *(title for _, title in SCORES), "after post-processor: mean log p / wrong class"]
    after_of = {(v["method"], v["scale"]): v["after"] for v in post.values()}
    table = [["exact samples", "—", *(text(reference[k]) for k, _ in SCORES), "—"]]
    for m in methods:
        for s, sc in scores[m.key].items():
            a = after_of.get((m.key, s))
            table.append([m.label, s, *(text(sc[k]) for k, _ in SCORES),
                          f"{text(a['mean_log_density'])} / {text(a['wrong_class_fraction'])}" if a else "—"])
    res.markdown = [f"Every method samples {fmt(p.fractal_samples_per_class)} points per class from the same fractal "
                    "CFG model with the same per-sample seeds; scores are against the exact mixture (sliced W1 on "
                    f"{fmt(SCORING['num_projections'])} directions, spread and recall against {fmt(n_ref)} exact "
                    "samples per class; the first row scores exact samples themselves: the floor or ideal of each "
                    "column). Each cell: value [95 % bootstrap interval over sample ids, stratified by class]; "
                    "recall's interval is over the exact reference points; the mean log p is dominated by a few "
                    "far-off samples, the median is not. The modern CFG variants use the settings of their shipped "
                    "configs/guidance/*.yaml; autoguidance's worse model is "
                    f"configs/fractal/cfg_autoguide_bad.yaml trained {fmt(p.fractal_autoguide_bad_steps)} steps.", "",
                    *md_table(header, table)]
    if ranking:
        res.markdown += [f"At a wrong-class rate ≤ {fmt(budget)} (plain CFG at s = {budget_scale}), the best scale "
                         "of each method by mean exact log-density (a selection on point values):", "",
                         *md_table(["method", "scale", *(title for _, title in SCORES)],
                                   [[r["label"], r["scale"], *(text(r[k]) for k, _ in SCORES)] for r in ranking])]
    if post:
        keys = ("mean_log_density", "median_log_density", "wrong_class_fraction")
        rows = [[v["label"], v["scale"], *(text(v[w][k]) for k in keys for w in ("before", "after")),
                 text(v["wrong_class_change"]), *map(fmt, v["median_move_by_density_decile"][::9])]
                for v in post.values()]
        res.markdown += ["The nearest-neighbour rectified-flow post-processor (configs/fractal/flow.yaml, "
                         f"{fmt(p.fractal_flow_steps)} training steps each, trained on the set it is applied to as in "
                         "the classifier-centric study's fractal figures). Wrong-class change: after − before, "
                         "paired over the same samples. The last two columns: median move of the samples in the "
                         "lowest and the highest decile of exact log-density before the flow.", "",
                         *md_table(["set", "scale", "mean log p before", "mean log p after", "median log p before",
                                    "median log p after", "wrong before", "wrong after", "wrong-class change",
                                    "move, lowest decile", "move, highest decile"], rows)]
    if failed:
        res.markdown += [f"Methods whose sampling step did not finish (no rows): {', '.join(failed)}.", ""]
    figure(res, methods, scores, reference)


#: each panel's y scale: far-off samples reach log p of -1e5 while good ones sit near 0; shares are bounded
FIGURE_SCALES = {"mean_log_density": "symlog", "median_log_density": "symlog", "wrong_class_fraction": "linear",
                 "sliced_wasserstein": "log"}


def figure(res: SectionResult, methods, scores: dict, reference: dict) -> None:
    def panel(key: str, title: str) -> BandPanel:
        curves = [(m.label, [float(s) for s in scores[m.key]], [sc[key] for sc in scores[m.key].values()])
                  for m in methods]
        return BandPanel("", title.rstrip(" ↑↓"), curves, (reference[key]["value"], "exact samples"),
                         FIGURE_SCALES[key])

    top, bottom = SCORES[:2], SCORES[2:4]  # two rows of two panels
    res.figure(band_grid([[panel(*top[i]), panel(*bottom[i])] for i in range(2)],
                         "scale (CFG and variants: s; classifier terms: guidance scale)", width=5, height=3.5),
               "fractal_benchmark.png", "fractal: exact scores vs scale for every method, with 95 % bootstrap "
               "intervals (dotted: exact samples)")


# ---- claims ---------------------------------------------------------------------------------------------------------
def claim_effects(exact: dict, labels: dict, deltas: list, ratios: list) -> dict:
    """Each claim's paired effect (an Estimate) and the parts its text lists."""
    out, parts = {}, []
    for key in ("cg_uncond", "cfg", "cg"):  # the paper's set-up (CG of the unconditional model) first: it is graded
        if key in exact:
            first, last = first_last(exact[key])
            e = score_estimate([exact[key][first]], "wrong_class_fraction", baseline=[exact[key][last]]).as_json()
            parts.append([f"{labels[key]}, scale {first} − {last}", e])
    if parts and "cg_uncond" in exact:
        out["fractal_wrong_class"] = {"effect": parts[0][1], "parts": parts}
    if "cfg" in exact:
        first, last = first_last(exact["cfg"])
        out["fractal_fidelity"] = {"effect": score_estimate([exact["cfg"][last]], "sliced_wasserstein",
                                                            baseline=[exact["cfg"][first]]).as_json(),
                                   "parts": [[f"CFG sliced W1, s = {last} − s = {first}", None]]}
    if "autoguidance" in exact and "cfg" in exact:
        common = [s for s in exact["cfg"] if s in exact["autoguidance"] and float(s) > 1]
        if common:
            s = common[-1]
            out["autoguidance_variety"] = {"effect": score_estimate([exact["autoguidance"][s]], "recall",
                                                                    baseline=[exact["cfg"][s]]).as_json(),
                                           "parts": [[f"recall, autoguidance − CFG at s = {s}", None]]}
    if deltas:  # the sets share their sample ids: pooled per id
        wrong = np.mean([d["wrong_class"] for d in deltas], axis=0)
        out["postprocessor_fractal_wrong_class"] = {"effect": per_sample_estimate([wrong]).as_json(), "parts": [
            ["wrong-class share after − before, mean over the sets", None]]}
        pooled = np.stack([d["log_density"] for d in deltas], axis=1)
        out["postprocessor_fractal"] = {"effect": seeds_estimate(
            [lambda idx: np.median(pooled[idx].reshape(len(idx), -1), axis=-1)], [(len(pooled),)]).as_json(),
            "parts": [["median over samples and sets of the change of exact log p(x|y)", None]]}

        def log_ratio(*idx):
            return np.mean([np.log(np.maximum(np.median(lo[i], -1), 1e-12) / np.maximum(np.median(hi[j], -1), 1e-12))
                            for (lo, hi), i, j in zip(ratios, idx[::2], idx[1::2])], axis=0)
        out["postprocessor_moves"] = {"effect": seeds_estimate(
            [log_ratio], [tuple(len(v) for pair in ratios for v in pair)]).as_json(),
            "parts": [["mean over sets of log(median move, lowest-density decile / highest)", None]]}
    return out


def stored(key: str, unit: str, sign: int = 1):
    def words(s: dict, effect: Estimate) -> str:
        return "; ".join(f"{label}: {text(e) if e else effect.text()}"
                         for label, e in s["claims"][key]["parts"])
    return stored_effect("fractal_benchmark", ("claims", key, "effect"), words, sign, unit,
                         f"the runs {key} reads did not finish")


PAPER = "Zhao & Schwing (classifier-centric)"
SECTION = Section(
    "fractal_benchmark", "3. Exact-distribution benchmark on the fractal", DATA, PRESET_FIELDS, plan, analyse, claims=(
        Claim("fractal_wrong_class", PAPER, "stronger classifier guidance leaves fewer samples in the wrong class (its "
              "Fig. 4: the unconditional model guided by a linear classifier, scale 1 vs a large scale)",
              "wrong-class share at scale 1 − at the large scale > 0",
              stored("fractal_wrong_class", "wrong-class share"),
              "far outside the data, where the large scale pushes samples along the linear classifier's normal, the "
              "exact posterior follows the nearest branch's tail, not the classifier's half-plane"),
        Claim("fractal_fidelity", "Karras et al. / Zhao & Schwing", "strong CFG trades distribution fidelity for "
              "class separation", "sliced W1 to the true conditional at the largest s − at s = 1 > 0",
              stored("fractal_fidelity", "sliced W1"),
              "the briefly trained denoiser is far from the true distribution at every s"),
        Claim("postprocessor_fractal", PAPER, "the post-processor moves guided samples into their class's mass",
              "median per-sample change of exact log p(x|y) (CG weak and large, CFG) > 0",
              stored("postprocessor_fractal", "log p(x|y)"), "a briefly trained flow; at a large CG scale samples sit "
              "far outside the data and a few flow steps do not carry them all the way"),
        Claim("postprocessor_fractal_wrong_class", PAPER, "the post-processor moves samples generated in the wrong "
              "class into the requested one (its Fig. 4, scale 1)", "wrong-class share after − before (CG weak and "
              "large, CFG) < 0", stored("postprocessor_fractal_wrong_class", "wrong-class share", -1),
              "far-off samples of the large CG scale are carried to the nearest branch, of either class"),
        Claim("postprocessor_moves", PAPER, "samples already in high density barely move, those near the class "
              "boundary move the most", "log(median move, lowest-density decile / highest) > 0",
              stored("postprocessor_moves", "log ratio"),
              "a briefly trained flow moves every sample by a similar, small amount"),
        Claim("autoguidance_variety", "Karras et al. (autoguidance)", "guiding with a worse version of the model "
              "concentrates samples without the loss of variety CFG shows", "recall of autoguidance − recall of CFG "
              "at the same scale > 0", stored("autoguidance_variety", "recall"), "the worse model is trained so "
              "briefly that it differs from the good one everywhere, not only where the good one is uncertain")))
