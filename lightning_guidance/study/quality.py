"""Section 9: quality vs scale, one figure per dataset, every guidance method's curve from the numbers the other
sections report (the same seeds throughout); post-processed sets are points of their own (fractal: sections 2/3's
flows, before and after; digits: section 7's flow at the unseen CFG scales)."""

from __future__ import annotations

import warnings

from .section import Products, Section, SectionResult, fmt, md_table
from .toy1d import SCALE_AXIS

POST = " + post-processor"


def quality_rows(series: dict) -> list[list[str]]:
    """One table row per curve: dataset, curve, and its ``scale: quality`` points (from ``series``)."""
    def points(xs, ys) -> str:
        return ", ".join(f"{fmt(x)}: {fmt(y)}" for x, y in zip(xs, ys))

    rows = [["1D " + tag, method, "exact log p(x|y)", points(c["scale"], c["mean_log_density"])]
            for tag, curves in series.get("toy1d", {}).items() for method, c in curves.items()]
    rows += [["2D fractal", c["label"], "exact log p(x|y)", points(c["scale"], c["mean_log_density"])]
             for key in ("fractal", "fractal_postprocessed") for c in series.get(key, {}).values()]
    rows += [["digits", c["label"], "fd_digits", points(c["scale"], c["fd_digits"])]
             for c in series.get("digits", {}).values()]
    return rows


def ok(products: Products, key: str) -> dict | None:
    res = products.results.get(key)
    return res.numbers if res is not None and res.status == "ok" else None


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.figures import pyplot

    plt = pyplot()
    series: dict[str, dict] = {}
    warnings.filterwarnings("ignore", message="No artists with labels")
    toy = ok(products, "toy1d")
    if toy is not None:
        mus = toy["mus"]
        fig, axes = plt.subplots(1, len(mus), figsize=(3.4 * len(mus), 2.8), squeeze=False)
        series["toy1d"] = {}
        for c, (tag, info) in enumerate(mus.items()):
            series["toy1d"][tag] = {}
            for m in info["methods"].values():
                xs, ys = [r["scale"] for r in m["rows"]], [r["mean_log_density"]["value"] for r in m["rows"]]
                series["toy1d"][tag][m["label"]] = {"mu": info["mu"], "scale": xs, "mean_log_density": ys}
                axes[0][c].plot(xs, ys, "o-", label=m["label"], ms=3)
            axes[0][c].set_title(f"1D, mu = {info['mu']:g}", fontsize=9)
            axes[0][c].set_xlabel(SCALE_AXIS, fontsize=8)
        axes[0][0].set_ylabel("mean exact log p(x|y)", fontsize=8)
        axes[0][0].legend(fontsize=6)
        res.figure(fig, "quality_toy1d.png", "1D mixture: exact log-density of the samples vs scale")
    bench = ok(products, "fractal_benchmark")
    if bench is not None:
        fig, ax = plt.subplots(figsize=(7.5, 3.4))
        series["fractal"] = {}
        for key, info in bench["methods"].items():
            xs = [float(s) for s in info["scales"]]
            ys = [v["mean_log_density"]["value"] for v in info["scales"].values()]
            series["fractal"][key] = {"label": info["label"], "scale": xs, "mean_log_density": ys}
            ax.plot(xs, ys, "o-", label=info["label"], ms=3)
        # each post-processed set: its point before (on its method's curve) and after the flow, joined by an arrow
        post = {}
        for flow in bench.get("postprocessed", {}).values():
            curve = post.setdefault(flow["method"], {"label": flow["label"] + POST, "scale": [],
                                                     "mean_log_density_before": [], "mean_log_density": []})
            curve["scale"].append(float(flow["scale"]))
            curve["mean_log_density_before"].append(flow["before"]["mean_log_density"]["value"])
            curve["mean_log_density"].append(flow["after"]["mean_log_density"]["value"])
        for curve in post.values():
            for x, b, a in zip(curve["scale"], curve["mean_log_density_before"], curve["mean_log_density"]):
                ax.annotate("", (x, a), (x, b), arrowprops={"arrowstyle": "->", "lw": 0.8, "color": "0.4"})
            ax.plot(curve["scale"], curve["mean_log_density"], "*", ms=9, label=curve["label"])
        if post:
            series["fractal_postprocessed"] = post
        ax.axhline(bench["exact_samples"]["mean_log_density"]["value"], color="k", ls=":", lw=0.8)
        ax.set_yscale("symlog", linthresh=1.0)  # far-off samples reach log p of -1e5; the good ones sit near 0
        ax.set_xlabel("scale", fontsize=8), ax.set_ylabel("mean exact log p(x|y) (symlog)", fontsize=8)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
        res.figure(fig, "quality_fractal.png", "2D fractal: exact log-density vs scale (dotted: exact samples; stars: "
                                               "after the post-processor, arrows from the same set before it)")
    runs = {}
    if ok(products, "digits_cfg") is not None:
        runs["cfg"] = {"label": "CFG (scale = s)", **ok(products, "digits_cfg")["table"]}
    for key in ("digits_cg", "digits_calibration"):
        if ok(products, key) is not None:
            runs.update({k: v for k, v in ok(products, key)["runs"].items() if len(v["scales"]) > 1})
    flow = ok(products, "digits_postprocessor")
    if flow is not None:  # CFG at the scales the flow never saw, before and after it
        for when, label in (("before", "CFG at the post-processor's unseen scales"), ("after", "CFG" + POST)):
            runs[f"flow-unseen-{when}"] = {"label": label, "post": when == "after",
                                           "scales": {s: flow[when]["scales"][s] for s in flow["scales"]}}
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
        res.figure(fig, "quality_digits.png", "digits: fd_digits vs scale for every guidance method (stars: CFG after "
                                              "the post-processor at scales it never saw)")
    if not series:
        raise LookupError("no section with sampled quality finished")
    res.numbers = {"series": series}
    res.markdown = ["Every curve uses the same per-sample seeds; its numbers are those of the sections above. "
                    "Post-processed sets are points of their own (the same samples before and after the flow).", "",
                    *res.markdown, *md_table(["dataset", "method", "quality", "scale: value"], quality_rows(series))]


SECTION = Section("quality_vs_scale", "9. Quality vs scale, one figure per dataset (same seeds)",
                  "the numbers of sections 1, 3, 4, 5, 6 and 7", (), lambda plan: None, analyse,
                  reads=("toy1d", "fractal_benchmark", "digits_cfg", "digits_cg", "digits_calibration"))
