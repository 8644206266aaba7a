"""Section 9: quality vs scale, one figure per dataset, every guidance method's curve from the numbers the other
sections report (the same seeds throughout), with its 95 % band where that section gives an interval; post-processed
sets are points of their own (fractal: sections 2/3's flows, before and after; digits: section 7's flow at the unseen
CFG scales). A figure is a number of the sections above, or an estimate of one (``{"value", "lo", "hi", ...}``)."""

from __future__ import annotations

from ..io.figures import axis_labels, fit_axis, legend_outside, plot_with_band, pyplot
from ..io.tables import fmt, md_table
from ..launch.products import Products
from .section import Section, SectionResult

POST = " + post-processor"
SCALE_AXIS = "scale (CFG: s, 1 = conditional; classifier terms: their guidance scale, 0 = unguided)"


def value(v):
    """A figure's value (a number, or an estimate's JSON)."""
    return v["value"] if isinstance(v, dict) else v


def triple(v) -> tuple:
    """(value, lo, hi): an estimate's interval, or the value thrice (no interval)."""
    return (v["value"], v["lo"], v["hi"]) if isinstance(v, dict) else (v, v, v)


def quality_rows(series: dict) -> list[list[str]]:
    """One table row per curve: dataset, curve, and its ``scale: quality`` points (from ``series``)."""
    def points(xs, ys) -> str:
        return ", ".join(f"{fmt(x)}: {fmt(value(y))}" for x, y in zip(xs, ys))

    rows = [["1D " + tag, method, "exact log p(x|y)", points(c["scale"], c["mean_log_density"])]
            for tag, curves in series.get("toy1d", {}).items() for method, c in curves.items()]
    rows += [["2D fractal", c["label"], "exact log p(x|y)", points(c["scale"], c["mean_log_density"])]
             for key in ("fractal", "fractal_postprocessed") for c in series.get(key, {}).values()]
    rows += [["digits", c["label"], "fd_digits", points(c["scale"], c["fd_digits"])]
             for c in series.get("digits", {}).values()]
    return rows


def draw(ax, curves: list[tuple[str, list, list, dict]], ylabel: str, xlabel: str = SCALE_AXIS,
         legend: bool = True) -> None:
    """Each ``(label, xs, figures, plot options)`` curve with its band, distinct styles, a legend off the data (or
    none: the figure's) and an axis framed on the data (outliers clipped with a note, or symlog)."""
    seen = []
    for i, (label, xs, ys, opts) in enumerate(curves):
        plot_with_band(ax, xs, [triple(y) for y in ys], label, i, **opts)
        seen += [v for y in ys for v in triple(y)]
    axis_labels(ax, xlabel, ylabel)
    fit_axis(ax, seen)
    if legend:
        legend_outside(ax, fontsize=6)


def toy_figure(res: SectionResult, toy: dict, series: dict) -> None:
    mus = toy["mus"]
    fig, axes = pyplot().subplots(1, len(mus), figsize=(4.2 * len(mus), 3.6), squeeze=False, layout="constrained")
    series["toy1d"] = {}
    for ax, (tag, info) in zip(axes[0], mus.items()):
        curves = series["toy1d"][tag] = {
            m["label"]: {"mu": info["mu"], "scale": [r["scale"] for r in m["rows"]],
                         "mean_log_density": [r["mean_log_density"] for r in m["rows"]]}
            for m in info["methods"].values()}
        draw(ax, [(m, c["scale"], c["mean_log_density"], {}) for m, c in curves.items()], "mean exact log p(x|y)",
             "scale (CFG: s; classifier terms: their scale)", legend=False)
        ax.set_title(f"1D, mu = {fmt(info['mu'])}", fontsize=9)
    legend_outside(fig, fontsize=7)
    res.figure(fig, "quality_toy1d.png", "1D mixture: exact log-density of the samples vs scale")


def fractal_figure(res: SectionResult, bench: dict, series: dict) -> None:
    series["fractal"] = {key: {"label": info["label"], "scale": [float(s) for s in info["scales"]],
                               "mean_log_density": [v["mean_log_density"] for v in info["scales"].values()]}
                         for key, info in bench["methods"].items()}
    post: dict = {}  # each post-processed set: its point before (on its method's curve) and after the flow
    for flow in bench.get("postprocessed", {}).values():
        curve = post.setdefault(flow["method"], {"label": flow["label"] + POST, "scale": [],
                                                 "mean_log_density_before": [], "mean_log_density": []})
        curve["scale"].append(float(flow["scale"]))
        curve["mean_log_density_before"].append(flow["before"]["mean_log_density"])
        curve["mean_log_density"].append(flow["after"]["mean_log_density"])
    if post:
        series["fractal_postprocessed"] = post
    fig, ax = pyplot().subplots(figsize=(8.0, 3.6))
    curves = [(c["label"], c["scale"], c["mean_log_density"], {}) for c in series["fractal"].values()]
    curves += [(c["label"], c["scale"], c["mean_log_density"], {"linestyle": "none", "marker": "*", "markersize": 9})
               for c in post.values()]
    draw(ax, curves, "mean exact log p(x|y)")
    for curve in post.values():
        for x, b, a in zip(curve["scale"], curve["mean_log_density_before"], curve["mean_log_density"]):
            ax.annotate("", (x, value(a)), (x, value(b)), arrowprops={"arrowstyle": "->", "lw": 0.8, "color": "0.4"})
    ax.axhline(value(bench["exact_samples"]["mean_log_density"]), color="k", ls=":", lw=0.8)
    res.figure(fig, "quality_fractal.png", "2D fractal: exact log-density vs scale (dotted: exact samples; stars: "
                                           "after the post-processor, arrows from the same set before it)")


def digits_figure(res: SectionResult, done: dict, series: dict) -> None:
    runs = {}
    if "digits_cfg" in done:
        runs["cfg"] = {"label": "CFG (scale = s)", **done["digits_cfg"]["table"]}
    for key in ("digits_cg", "digits_calibration"):
        runs.update({k: v for k, v in done.get(key, {}).get("runs", {}).items() if len(v["scales"]) > 1})
    flow = done.get("digits_postprocessor")
    if flow is not None:  # CFG at the scales the flow never saw, before and after it
        for when, label in (("before", "CFG at the post-processor's unseen scales"), ("after", "CFG" + POST)):
            runs[f"flow-unseen-{when}"] = {"label": label, "post": when == "after",
                                           "scales": {s: flow[when]["scales"][s] for s in flow["scales"]}}
    if not runs:
        return
    series["digits"] = {}
    for key, info in runs.items():
        est = info.get("estimates", {})
        series["digits"][key] = {"label": info["label"], "scale": [float(s) for s in info["scales"]],
                                 "fd_digits": [est.get(s, {}).get("fd_digits", v["fd_digits"])
                                               for s, v in info["scales"].items()]}
    fig, ax = pyplot().subplots(figsize=(7.5, 3.6))
    draw(ax, [(c["label"], c["scale"], c["fd_digits"], {"marker": "*", "markersize": 8} if runs[k].get("post")
               else {}) for k, c in series["digits"].items()], "fd_digits (lower is better)")
    res.figure(fig, "quality_digits.png", "digits: fd_digits vs scale for every guidance method, 95 % bands (stars: "
                                          "CFG after the post-processor at scales it never saw)")


def analyse(products: Products, res: SectionResult) -> None:
    done = {k: r.numbers for k, r in products.results.items() if r.status == "ok"}  # the sections that finished
    series: dict[str, dict] = {}
    if "toy1d" in done:
        toy_figure(res, done["toy1d"], series)
    if "fractal_benchmark" in done:
        fractal_figure(res, done["fractal_benchmark"], series)
    digits_figure(res, done, series)
    if not series:
        raise LookupError("no section with sampled quality finished")
    res.numbers = {"series": series}
    res.markdown = ["Every curve uses the same per-sample seeds; its numbers are those of the sections above, with "
                    "their 95 % bands where those sections give intervals. Post-processed sets are points of their "
                    "own (the same samples before and after the flow).", "",
                    *res.markdown, *md_table(["dataset", "method", "quality", "scale: value"], quality_rows(series))]


SECTION = Section("quality_vs_scale", "9. Quality vs scale, one figure per dataset (same seeds)",
                  "the numbers of sections 1, 3, 4, 5, 6 and 7", (), lambda plan: None, analyse,
                  reads=("toy1d", "fractal_benchmark", "digits_cfg", "digits_cg", "digits_calibration"))
