"""Section 10: the generated digits themselves: for every digits sampling run this study made (CFG at its scales,
classifier guidance, the ablations, ...), grids of the samples of training seed 0, one panel per scale (rows: class),
read from the shards the other sections' steps wrote (no sampling of its own)."""

from __future__ import annotations

import numpy as np

from . import digits
from ..io.tables import md_table
from ..launch.products import Products
from .section import Section, SectionResult

MAX_PANELS, PER_CLASS = 6, 8


def panels(scales: list[float]) -> list[float]:
    """At most MAX_PANELS of a run's scales, spread over the sweep (first and last kept; all when there are no more)."""
    return [scales[i] for i in np.unique(np.linspace(0, len(scales) - 1, MAX_PANELS).round().astype(int))]


def analyse(products: Products, res: SectionResult) -> None:
    from ..io.panels import digit_grids_figure

    have = [r for r in digits.runs(products.preset).values() if r.sample in products.steps and products.ok(r.sample)]
    if not have:
        raise LookupError("no digits sampling step finished")
    single, rows = [], []
    for r in have:
        got = products.samples(r.sample)
        shown = panels(sorted(got))
        cfg = products.config_value(r.sample, "model.init_args.sweep.target") == "cfg"
        name = {s: f"s = {s:g}" if cfg else f"scale {s:g}" for s in shown}  # a CFG scale is s, never s - 1
        rows.append([r.label, r.key, ", ".join(f"{s:g}" for s in shown)])
        if len(got) == 1:
            single.append((f"{r.label.replace(', ', chr(10), 1)}\n{name[shown[0]]}", *got[shown[0]]))
            continue
        res.figure(digit_grids_figure([[(f"{r.label}\n{name[s]}", *got[s]) for s in shown]], PER_CLASS),
                   f"digits_grid_{r.key}.png", f"digits, {r.label}: samples at each scale (rows: class)")
    for start in range(0, len(single), MAX_PANELS):
        res.figure(digit_grids_figure([single[start:start + MAX_PANELS]], PER_CLASS),
                   f"digits_grid_one_scale_{start // MAX_PANELS + 1}.png",
                   "digits: the runs sampled at one scale (the ablations), rows: class")
    res.markdown = ["The first samples of each class (training seed 0, the same sample ids and seeds in every run) "
                    "of every digits sampling run this study made; the post-processed sets are in section 7.", "",
                    *md_table(["run", "key", "scales shown"], rows), *res.markdown]


SECTION = Section("digits_grids", "10. Digits, the samples: grids of every method and scale", digits.DATA, digits.SIZES,
                  digits.plan_base, analyse)
