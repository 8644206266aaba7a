"""Section 4: classifier-free guidance on digits, a fine sweep of the CFG scale graded by the judge (``fd_digits``,
precision, recall, judge accuracy)."""

from __future__ import annotations

from . import digits
from .section import Claim, Products, Section, SectionResult, fmt, monotone_up, numbers_of


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.figures import pyplot

    p, tables = products.preset, digits.read_tables(products)
    cfg = digits.runs(p)["cfg"]
    if "cfg" not in tables:
        raise LookupError(products.failed_inputs([cfg.grade]))
    t = tables["cfg"]
    s_best, fd_best = digits.best(t)
    res.numbers = {"table": t, "best_scale": s_best, "best_fd_digits": fd_best, "samples_per_scale": t["num_samples"],
                   "ddim_steps": p.digits_ddim_steps}
    scales = [float(s) for s in t["scales"]]
    fig, ax = pyplot().subplots(1, 2, figsize=(9, 3))
    ax[0].plot(scales, [m["fd_digits"] for m in t["scales"].values()], "o-")
    ax[0].set_title("fd_digits (lower is better)", fontsize=9)
    for k in ("precision", "recall", "judge_accuracy"):
        ax[1].plot(scales, [m[k] for m in t["scales"].values()], "o-", label=k)
    ax[1].legend(fontsize=7)
    for a in ax:
        a.set_xlabel("CFG scale s (1 = conditional)", fontsize=8)
    res.figure(fig, "digits_cfg_sweep.png", "digits: CFG scale sweep")
    res.markdown = [f"DDIM with {fmt(p.digits_ddim_steps)} steps, {fmt(t['num_samples'])} samples per scale. Lowest "
                    f"fd_digits {fmt(fd_best)} at s = {fmt(s_best)}; the judge on real held-out images: precision "
                    f"{fmt(t['real'].get('precision'))}, judge accuracy {fmt(t['real'].get('judge_accuracy'))}.", "",
                    *res.markdown, *digits.run_table([cfg], tables, "CFG scale")]


def c_best_scale(n):
    s = numbers_of(n, "digits_cfg")
    fd = digits.fd(s["table"])
    lo, hi, best, cond = min(fd), max(fd), s["best_scale"], fd.get(1.0)
    agree = lo < best < hi and cond is not None and fd[best] < cond and best > 1
    return (f"lowest fd_digits {fmt(fd[best])} at s = {fmt(best)} (s = 1: {fmt(cond)}; sweep {fmt(lo)} to {fmt(hi)})",
            agree)


def c_fidelity(n):
    t = numbers_of(n, "digits_cfg")["table"]["scales"]
    xs = [float(s) for s in t if float(s) >= 1]
    ys = [t[f"{s:g}"]["judge_accuracy"] for s in xs]
    rho = monotone_up(xs, ys)
    return (f"judge accuracy {fmt(ys[0])} at s = {fmt(xs[0])} → {fmt(ys[-1])} at s = {fmt(xs[-1])} "
            f"(Spearman {fmt(rho)})", rho > 0)


SECTION = Section(
    "digits_cfg", "4. Digits, classifier-free guidance: a fine scale sweep", digits.DATA,
    (*digits.SIZES, "cfg_fine_scales"), digits.plan_base, analyse, claims=(
        Claim("cfg_u_shape", "Ho & Salimans (CFG)", "FID is U-shaped in the guidance scale", "a moderate scale beats "
              "both no guidance (s = 1) and strong guidance", c_best_scale, "briefly trained model on 8x8 digits: "
              "guidance may only help or only hurt over the swept range"),
        Claim("cfg_fidelity", "Ho & Salimans (CFG)", "class fidelity (IS) rises with the scale",
              "rises monotonically with s", c_fidelity, "the judge saturates near its accuracy on real images")))
