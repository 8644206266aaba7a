"""Section 9 (quality vs scale, one figure per dataset) and the agreement table (each paper claim, the direction the
paper reports, the direction we measured, agree / disagree, and a likely reason for each disagreement).

The claims read only the numbers the other sections put in ``report.json``; a claim whose section failed or did not
run is "not measured", never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .results import SectionResult, fmt, md_table, pyplot, save_figure


# ---- section 9 ----------------------------------------------------------------------------------------------------
POST = " + post-processor"


def quality_rows(series: dict) -> list[list[str]]:
    """One table row per curve of section 9: dataset, curve, and its ``scale: quality`` points (from ``series``)."""
    rows = []
    for tag, curves in series.get("toy1d", {}).items():
        for method, c in curves.items():
            rows.append(["1D " + tag, method, "exact log p(x|y)", ", ".join(
                f"{fmt(x)}: {fmt(y)}" for x, y in zip(c["strength"], c["mean_log_density"]))])
    for key in ("fractal", "fractal_postprocessed"):
        for c in series.get(key, {}).values():
            rows.append(["2D fractal", c["label"], "exact log p(x|y)",
                         ", ".join(f"{fmt(x)}: {fmt(y)}" for x, y in zip(c["scale"], c["mean_log_density"]))])
    for c in series.get("digits", {}).values():
        rows.append(["digits", c["label"], "fd_digits",
                     ", ".join(f"{fmt(x)}: {fmt(y)}" for x, y in zip(c["scale"], c["fd_digits"]))])
    return rows


def analyse_quality(ctx, done: dict[str, SectionResult]) -> SectionResult:
    """One figure per dataset: every guidance method's quality vs its scale, the post-processed sets as their own
    points (fractal: sections 2/3's flows, before and after; digits: section 7's flow at the unseen CFG scales)."""
    res = SectionResult("quality_vs_scale", "9. Quality vs scale, one figure per dataset (same seeds)")
    plt = pyplot()
    series: dict[str, dict] = {}
    import warnings

    warnings.filterwarnings("ignore", message="No artists with labels")
    toy = done.get("toy1d")
    if toy is not None and toy.status == "ok":
        mus = toy.numbers["mus"]
        fig, axes = plt.subplots(1, len(mus), figsize=(3.4 * len(mus), 2.8), squeeze=False)
        series["toy1d"] = {}
        for c, (tag, info) in enumerate(mus.items()):
            series["toy1d"][tag] = {}
            for method, rows in info["methods"].items():
                xs, ys = [r["strength"] for r in rows], [r["mean_log_density"] for r in rows]
                series["toy1d"][tag][method] = {"mu": info["mu"], "strength": xs, "mean_log_density": ys}
                axes[0][c].plot(xs, ys, "o-", label=method, ms=3)
            axes[0][c].set_title(f"1D, mu = {info['mu']:g}", fontsize=9)
            axes[0][c].set_xlabel("guidance strength (CG scale; CFG s - 1)", fontsize=8)
        axes[0][0].set_ylabel("mean exact log p(x|y)", fontsize=8)
        axes[0][0].legend(fontsize=6)
        res.figure(save_figure(fig, ctx.run_dir / "figures" / "quality_toy1d.png"), ctx.run_dir,
                   "1D mixture: exact log-density of the samples vs guidance strength")
    bench = done.get("fractal_benchmark")
    if bench is not None and bench.status == "ok":
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        series["fractal"] = {}
        for key, info in bench.numbers["methods"].items():
            xs = [float(s) for s in info["scales"]]
            ys = [v["mean_log_density"] for v in info["scales"].values()]
            series["fractal"][key] = {"label": info["label"], "scale": xs, "mean_log_density": ys}
            ax.plot(xs, ys, "o-", label=info["label"], ms=3)
        # each post-processed set: its point before (on its method's curve) and after the flow, joined by an arrow
        post = {}
        for flow in bench.numbers.get("postprocessed", {}).values():
            curve = post.setdefault(flow["method"], {"label": flow["label"] + POST, "scale": [],
                                                     "mean_log_density_before": [], "mean_log_density": []})
            curve["scale"].append(float(flow["scale"]))
            curve["mean_log_density_before"].append(flow["before"]["mean_log_density"])
            curve["mean_log_density"].append(flow["after"]["mean_log_density"])
        for curve in post.values():
            for x, b, a in zip(curve["scale"], curve["mean_log_density_before"], curve["mean_log_density"]):
                ax.annotate("", (x, a), (x, b), arrowprops={"arrowstyle": "->", "lw": 0.8, "color": "0.4"})
            ax.plot(curve["scale"], curve["mean_log_density"], "*", ms=9, label=curve["label"])
        if post:
            series["fractal_postprocessed"] = post
        ax.axhline(bench.numbers["exact_samples"]["mean_log_density"], color="k", ls=":", lw=0.8)
        ax.set_yscale("symlog", linthresh=1.0)  # far-off samples reach log p of -1e5; the good ones sit near 0
        ax.set_xlabel("scale", fontsize=8), ax.set_ylabel("mean exact log p(x|y) (symlog)", fontsize=8)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
        res.figure(save_figure(fig, ctx.run_dir / "figures" / "quality_fractal.png"), ctx.run_dir,
                   "2D fractal: exact log-density vs scale (dotted: exact samples; stars: after the post-processor, "
                   "arrows from the same set before it)")
    runs = {}
    for key in ("digits_cfg", "digits_cg", "digits_calibration"):
        sec = done.get(key)
        if sec is None or sec.status != "ok":
            continue
        if key == "digits_cfg":
            runs["cfg"] = {"label": "CFG (scale = s)", **sec.numbers["table"]}
        else:
            runs.update({k: v for k, v in sec.numbers["runs"].items() if len(v["scales"]) > 1})
    flow = done.get("digits_postprocessor")
    if flow is not None and flow.status == "ok":  # CFG at the scales the flow never saw, before and after it
        n = flow.numbers
        for when, label in (("before", "CFG at the post-processor's unseen scales"), ("after", "CFG" + POST)):
            runs[f"flow-unseen-{when}"] = {"label": label, "post": when == "after",
                                           "scales": {s: n[when]["scales"][s] for s in n["scales"]}}
    if runs:
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        series["digits"] = {}
        for key, info in runs.items():
            xs = [float(s) for s in info["scales"]]
            ys = [v["fd_digits"] for v in info["scales"].values()]
            series["digits"][key] = {"label": info["label"], "scale": xs, "fd_digits": ys}
            ax.plot(xs, ys, "*--" if info.get("post") else "o-", label=info["label"], ms=8 if info.get("post") else 3)
        ax.set_xlabel("scale (CFG: s; classifier terms: guidance scale)", fontsize=8)
        ax.set_ylabel("fd_digits (lower is better)", fontsize=8)
        ax.legend(fontsize=5)
        res.figure(save_figure(fig, ctx.run_dir / "figures" / "quality_digits.png"), ctx.run_dir,
                   "digits: fd_digits vs scale for every guidance method (stars: CFG after the post-processor at "
                   "scales it never saw)")
    res.numbers = {"series": series}
    if not series:
        res.status, res.reason = "failed", "no section with sampled quality finished"
    else:
        res.markdown = ["Every curve uses the same per-sample seeds; its numbers are those of the sections above. "
                        "Post-processed sets are points of their own (the same samples before and after the flow).",
                        "", *res.markdown,
                        *md_table(["dataset", "method", "quality", "scale: value"], quality_rows(series))]
    return res


# ---- the agreement table ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    key: str
    paper: str
    claim: str
    paper_direction: str
    measure: Callable[[dict], tuple[str, bool]]  # numbers of all sections -> (what we measured, agrees)
    likely_reason: str  # shown only when we disagree


def _secs(n: dict, key: str) -> dict:
    sec = n.get(key)
    if not sec:
        raise LookupError(f"section {key} was not run")
    if sec["status"] != "ok":
        raise LookupError(f"section {key} failed")
    return sec["numbers"]


def _fd(table: dict) -> dict[float, float]:
    return {float(s): m["fd_digits"] for s, m in table["scales"].items()}


def _monotone_up(xs: list[float], ys: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys)[0]) if len(set(ys)) > 1 else 0.0


def c_cfg_best_scale(n):
    s = _secs(n, "digits_cfg")
    fd = _fd(s["table"])
    lo, hi = min(fd), max(fd)
    best = s["best_scale"]
    cond = fd.get(1.0)
    agree = lo < best < hi and cond is not None and fd[best] < cond and best > 1
    return (f"lowest fd_digits {fmt(fd[best])} at s = {fmt(best)} (s = 1: {fmt(cond)}; sweep {fmt(lo)} to {fmt(hi)})",
            agree)


def c_cfg_fidelity(n):
    t = _secs(n, "digits_cfg")["table"]["scales"]
    xs = [float(s) for s in t if float(s) >= 1]
    ys = [t[f"{s:g}"]["judge_accuracy"] for s in xs]
    rho = _monotone_up(xs, ys)
    return (f"judge accuracy {fmt(ys[0])} at s = {fmt(xs[0])} → {fmt(ys[-1])} at s = {fmt(xs[-1])} "
            f"(Spearman {fmt(rho)})", rho > 0)


def c_boundary(n):
    mus = _secs(n, "toy1d")["mus"]
    parts, ok = [], True
    for tag, info in mus.items():
        for method, rows in info["methods"].items():
            rho = _monotone_up([r["strength"] for r in rows], [r["mean_boundary_distance"] for r in rows])
            ok &= rho > 0
            parts.append(f"mu {fmt(info['mu'])} {method.split(',')[0] if method == 'CFG' else method[4:]}: "
                         f"{fmt(rows[0]['mean_boundary_distance'])} → {fmt(rows[-1]['mean_boundary_distance'])}")
    return "; ".join(parts), ok


def c_fractal_wrong_class(n):
    m = _secs(n, "fractal_benchmark")["methods"]
    parts, ok = [], True
    for key in ("cfg", "cg"):
        if key not in m:
            continue
        sc = m[key]["scales"]
        first, last = next(iter(sc)), list(sc)[-1]
        ok &= sc[last]["wrong_class_fraction"] < sc[first]["wrong_class_fraction"]
        parts.append(f"{m[key]['label']}: {fmt(sc[first]['wrong_class_fraction'])} at {first} → "
                     f"{fmt(sc[last]['wrong_class_fraction'])} at {last}")
    if not parts:
        raise LookupError("no CFG/CG rows")
    return "; ".join(parts), ok


def c_fractal_fidelity(n):
    m = _secs(n, "fractal_benchmark")["methods"]
    sc = m["cfg"]["scales"]
    first, last = next(iter(sc)), list(sc)[-1]
    a, b = sc[first]["sliced_wasserstein"], sc[last]["sliced_wasserstein"]
    return f"CFG sliced W1 {fmt(a)} at s = {first} → {fmt(b)} at s = {last}", b > a


def _run(n, section, key):
    return _secs(n, section)["runs"][key]


def c_clean_vs_noisy(n):
    clean, noisy = _run(n, "digits_cg", "cg-clean"), _run(n, "digits_cg", "cg-noisy")
    bc = min(v for s, v in _fd(clean).items() if s > 0)
    bn = min(v for s, v in _fd(noisy).items() if s > 0)
    return f"best guided fd_digits: clean on x0_hat {fmt(bc)}, noisy on x_t {fmt(bn)}", bc <= bn


def c_guidance_helps(n):
    clean = _fd(_run(n, "digits_cg", "cg-clean"))
    b = min(v for s, v in clean.items() if s > 0)
    return f"clean-classifier guidance: unguided {fmt(clean[0.0])}, best guided {fmt(b)}", b < clean[0.0]


def _ablation(n, keys: list[tuple[float, str]]):
    s = _secs(n, "digits_cg")
    scale = f"{s['ablation_scale']:g}"
    out = {}
    for value, key in keys:
        if key in s["runs"] and scale in s["runs"][key]["scales"]:
            out[value] = s["runs"][key]["scales"][scale]["fd_digits"]
    if len(out) < 2:
        raise LookupError("fewer than two ablation runs finished")
    return out


def c_tau(n):
    from .digits import REFERENCE

    taus = _secs(n, "digits_cg")["runs"]
    vals = _ablation(n, [(float(k.split("tau")[1].split("-")[0]), k) for k in taus
                         if k.startswith("ots-") and k.endswith(f"gamma{REFERENCE['gamma']:g}")])
    best = min(vals, key=vals.get)
    pairs = sorted(vals.items(), reverse=True)
    return ("fd_digits by tau2/tau1: " + ", ".join(f"{fmt(t)}: {fmt(v)}" for t, v in pairs),
            best < 1.0 and vals[best] < vals.get(1.0, float("inf")))


def c_gamma(n):
    from .digits import REFERENCE

    runs = _secs(n, "digits_cg")["runs"]
    vals = _ablation(n, [(float(k.split("gamma")[1]), k) for k in runs
                         if k.startswith(f"ots-tau{REFERENCE['tau2']:g}-gamma") and not k.endswith("through")])
    best = min(vals, key=vals.get)
    return ("fd_digits by gamma: " + ", ".join(f"{fmt(g)}: {fmt(v)}" for g, v in sorted(vals.items())),
            best > 0 and vals[best] < vals.get(0.0, float("inf")))


def c_softplus(n):
    raise LookupError(_secs(n, "digits_cg")["softplus_beta"])


def c_cfg_plus_cg(n):
    both, cfg = _fd(_run(n, "digits_cg", "cfg-plus-cg")), _fd(_secs(n, "digits_cfg")["table"])
    pairs = [(s, v, cfg[s]) for s, v in both.items() if s in cfg]
    if not pairs:
        raise LookupError("no common CFG scale")
    wins = sum(v < c for _, v, c in pairs)
    return ("; ".join(f"s = {fmt(s)}: CFG {fmt(c)}, CFG + CG {fmt(v)}" for s, v, c in pairs),
            wins * 2 > len(pairs))


def c_calibration_lowers_ece(n):
    ft = _secs(n, "digits_calibration")["fine_tune"]
    cal, ctl = ft["digits-calibrated"], ft.get("digits-calibrated-lambda0")
    text = f"ECE {fmt(cal['before']['ece'])} → {fmt(cal['after']['ece'])} (Smooth-ECE fine-tune)"
    agree = cal["after"]["ece"] < cal["before"]["ece"]
    if ctl:
        text += f", {fmt(ctl['after']['ece'])} with lambda = 0"
        agree &= cal["after"]["ece"] <= ctl["after"]["ece"]
    return text, agree


def c_calibrated_guidance(n):
    runs = _secs(n, "digits_calibration")["runs"]
    cal = min(v for s, v in _fd(runs["cg-calibrated"]).items() if s > 0)
    orig = min(v for s, v in _fd(_run(n, "digits_cg", "cg-noisy")).items() if s > 0)
    ctl = runs.get("cg-lambda0")
    text = f"best guided fd_digits: calibrated {fmt(cal)}, original {fmt(orig)}"
    if ctl:
        text += f", lambda = 0 control {fmt(min(v for s, v in _fd(ctl).items() if s > 0))}"
    return text, cal < orig


def c_ece_fd(n):
    s = _secs(n, "ece_vs_fd")
    return f"Spearman rho(integral ECE, fd_digits) = {fmt(s['spearman_rho'])} over {fmt(len(s['points']))} runs", \
        s["spearman_rho"] > 0


def c_js_best(n):
    runs = _secs(n, "digits_calibration")["runs"]
    divs = {k.split("-", 1)[1]: min(v for s, v in _fd(r).items() if s > 0) for k, r in runs.items()
            if k.startswith("divergence-")}
    if len(divs) < 2:
        raise LookupError("fewer than two f-divergences ran")
    best = min(divs, key=divs.get)
    return "best guided fd_digits: " + ", ".join(f"{k} {fmt(v)}" for k, v in divs.items()), best == "js"


def c_regularised_beats_plain(n):
    runs = _secs(n, "digits_calibration")["runs"]
    plain = min(v for s, v in _fd(_run(n, "digits_cg", "cg-clean")).items() if s > 0)
    reg = {k: min(v for s, v in _fd(runs[k]).items() if s > 0) for k in ("tilted", "entropy") if k in runs}
    if not reg:
        raise LookupError("tilted / entropy did not run")
    return (f"best guided fd_digits: plain {fmt(plain)}, " + ", ".join(f"{k} {fmt(v)}" for k, v in reg.items()),
            min(reg.values()) < plain)


def c_postprocessor(n):
    s = _secs(n, "digits_postprocessor")
    b, a = s["before"]["scales"], s["after"]["scales"]
    return ("fd_digits before → after: " + "; ".join(f"s = {x}: {fmt(b[x]['fd_digits'])} → {fmt(a[x]['fd_digits'])}"
                                                     for x in s["scales"]), all(s["fd_lower_after"].values()))


def c_fractal_postprocessor(n):
    flows = _secs(n, "fractal_benchmark")["postprocessed"]
    if not flows:
        raise LookupError("no post-processed fractal set finished")
    parts, ok = [], True
    for v in flows.values():
        b, a = v["before"], v["after"]
        ok &= a["mean_log_density"] > b["mean_log_density"] and a["wrong_class_fraction"] <= b["wrong_class_fraction"]
        parts.append(f"{v['label']} s = {v['scale']}: log p {fmt(b['mean_log_density'])} → "
                     f"{fmt(a['mean_log_density'])}, wrong class {fmt(b['wrong_class_fraction'])} → "
                     f"{fmt(a['wrong_class_fraction'])}")
    return "; ".join(parts), ok


def c_fractal_moves(n):
    flows = _secs(n, "fractal_benchmark")["postprocessed"]
    if not flows:
        raise LookupError("no post-processed fractal set finished")
    parts, ok = [], True
    for v in flows.values():
        d = v["median_move_by_density_decile"]
        ok &= d[0] > d[-1]
        parts.append(f"{v['label']} s = {v['scale']}: median move {fmt(d[0])} (lowest-density decile) vs "
                     f"{fmt(d[-1])} (highest)")
    return "; ".join(parts), ok


def c_autoguidance_variety(n):
    m = _secs(n, "fractal_benchmark")["methods"]
    if "autoguidance" not in m or "cfg" not in m:
        raise LookupError("autoguidance or CFG did not run")
    common = [s for s in m["cfg"]["scales"] if s in m["autoguidance"]["scales"] and float(s) > 1]
    if not common:
        raise LookupError("no common scale above 1")
    s = common[-1]
    a, c = m["autoguidance"]["scales"][s], m["cfg"]["scales"][s]
    return (f"at s = {s}: recall autoguidance {fmt(a['recall'])} vs CFG {fmt(c['recall'])}; log p "
            f"{fmt(a['mean_log_density'])} vs {fmt(c['mean_log_density'])}", a["recall"] >= c["recall"])


NOISE = ("small data: 8x8 digits, a few hundred samples per setting and briefly trained models; fd differences of "
         "this size are within sampling noise")

CLAIMS: list[Claim] = [
    Claim("cfg_u_shape", "Ho & Salimans (CFG)", "FID is U-shaped in the guidance scale",
          "a moderate scale beats both no guidance (s = 1) and strong guidance", c_cfg_best_scale,
          "briefly trained model on 8x8 digits: guidance may only help or only hurt over the swept range"),
    Claim("cfg_fidelity", "Ho & Salimans (CFG)", "class fidelity (IS) rises with the scale",
          "rises monotonically with s", c_cfg_fidelity, "the judge saturates near its accuracy on real images"),
    Claim("boundary_distance", "Zhao & Schwing (classifier-centric)",
          "guidance pushes samples away from the decision boundary, further at larger scales",
          "distance grows with the scale (CG and CFG)", c_boundary,
          "at mu = 0.1 the classes overlap and a briefly trained model/classifier gives a weak, noisy push"),
    Claim("fractal_wrong_class", "Zhao & Schwing (classifier-centric)",
          "stronger guidance leaves fewer samples in the wrong class", "wrong-class share falls with the scale",
          c_fractal_wrong_class, "a linear classifier cannot separate the fractal's interleaved branches"),
    Claim("fractal_fidelity", "Karras et al. / Zhao & Schwing", "strong CFG trades distribution fidelity for class "
          "separation", "distance to the true conditional grows at large s", c_fractal_fidelity,
          "the briefly trained denoiser is far from the true distribution at every s"),
    Claim("clean_vs_noisy", "Ma et al. (EluCD)", "an off-the-shelf clean classifier on x0_hat guides as well as a "
          "noisy classifier", "clean ≤ noisy in FID", c_clean_vs_noisy, NOISE),
    Claim("guidance_helps", "Ma et al. (EluCD)", "off-the-shelf guidance improves over the unguided model",
          "guided FID < unguided FID", c_guidance_helps, NOISE),
    Claim("tau", "Ma et al. (EluCD)", "lowering tau2/tau1 below 1 improves FID (best near .5)",
          "best tau2/tau1 < 1", c_tau, NOISE),
    Claim("sine_gamma", "Ma et al. (EluCD)", "a sine-boosted schedule (gamma > 0) improves FID (best near .3)",
          "best gamma > 0", c_gamma, NOISE + "; few DDPM steps make the boost's shape coarse"),
    Claim("softplus", "Ma et al. (EluCD)", "Softplus smoothing of ReLU lowers FID (beta 3 best)",
          "smaller beta is better", c_softplus, ""),
    Claim("cfg_plus_cg", "Ma et al. (EluCD)", "adding an off-the-shelf classifier to CFG improves FID",
          "CFG + CG < CFG at the same scale", c_cfg_plus_cg, NOISE),
    Claim("calibration_ece", "Javid et al. (calibration)", "Smooth-ECE fine-tuning lowers the classifier's ECE",
          "ECE falls, and more than with lambda = 0", c_calibration_lowers_ece,
          "few fine-tuning epochs on a small held-out split"),
    Claim("calibrated_guidance", "Javid et al. (calibration)", "guidance with the calibrated classifier gives a better "
          "FID than with the original", "calibrated < original", c_calibrated_guidance, NOISE),
    Claim("ece_fd", "Ma et al. / Javid et al.", "lower integral ECE goes with lower FID",
          "positive rank correlation", c_ece_fd, "few runs, and our runs vary much more than the guide's calibration"),
    Claim("js_best", "Javid et al. (calibration)", "Jensen-Shannon is the best f-divergence for guidance",
          "JS lowest FID among the divergences", c_js_best, NOISE),
    Claim("regularised", "Javid et al. (calibration)", "regularised (tilted / entropy) guidance beats plain guidance "
          "with the same classifier", "regularised < plain", c_regularised_beats_plain, NOISE),
    Claim("postprocessor", "Zhao & Schwing (classifier-centric)", "the NN rectified-flow postprocessor lowers FID at "
          "every CFG scale", "after < before at every scale", c_postprocessor,
          "a briefly trained flow on a few hundred generated digits, its k nearest neighbours among the few real "
          "digits of each class: the flow can pull samples toward a few training digits and lose variety, which "
          "fd_digits penalises"),
    Claim("postprocessor_fractal", "Zhao & Schwing (classifier-centric)", "the post-processor moves guided samples "
          "into their class's mass", "exact log p(x|y) rises and the wrong-class share does not grow (CG weak and "
          "large, CFG)", c_fractal_postprocessor, "a briefly trained flow; at a large CG scale samples sit far "
          "outside the data and a few flow steps do not carry them all the way"),
    Claim("postprocessor_moves", "Zhao & Schwing (classifier-centric)", "samples already in high density barely "
          "move, those near the class boundary move the most", "median move larger in the lowest-density decile",
          c_fractal_moves, "a briefly trained flow moves every sample by a similar, small amount"),
    Claim("autoguidance_variety", "Karras et al. (autoguidance)", "guiding with a worse version of the model "
          "concentrates samples without the loss of variety CFG shows", "recall of autoguidance ≥ recall of CFG at "
          "the same scale", c_autoguidance_variety, "the worse model is trained so briefly that it differs from the "
          "good one everywhere, not only where the good one is uncertain"),
]


def agreement(numbers: dict) -> list[dict]:
    rows = []
    for c in CLAIMS:
        try:
            measured, agree = c.measure(numbers)
            verdict = "agree" if agree else "disagree"
        except (LookupError, ValueError, ZeroDivisionError) as err:
            measured, verdict = f"not measured: {err}".replace("'", ""), "not measured"
        rows.append({"key": c.key, "paper": c.paper, "claim": c.claim, "paper_direction": c.paper_direction,
                     "measured": measured, "verdict": verdict,
                     "likely_reason": c.likely_reason if verdict == "disagree" else ""})
    return rows


def agreement_markdown(rows: list[dict]) -> list[str]:
    table = [[r["paper"], r["claim"], r["paper_direction"], r["measured"], r["verdict"], r["likely_reason"]]
             for r in rows]
    return md_table(["paper", "claim", "paper's direction", "we measured", "verdict", "likely reason"], table)
