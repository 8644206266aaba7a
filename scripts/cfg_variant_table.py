"""Produce the exact fractal table of the CFG variants (:mod:`lightning_guidance.metrics.cfg_variant_table`):
load the fractal CFG model, autoguidance's worse model and the noisy fractal classifier, sample every variant at
every scale with the same seeds, score against the exact distribution, write ``table.md`` and ``table.json``.

    python scripts/cfg_variant_table.py [--scales 1.5 2.5 4] [--samples-per-class 1000] [--num-steps 50]

needs: python cli.py fit --config configs/fractal/cfg.yaml (the model), configs/fractal/cfg_autoguide_bad.yaml
(autoguidance's worse model) and configs/fractal/classifier.yaml (classifier guidance).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lightning_guidance.io.atomic import atomic_write, atomic_write_text
from lightning_guidance.metrics.cfg_variant_table import (best_at_equal_wrong_class_rate, fractal_variants, markdown,
                                                          variant_table)
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion
from lightning_guidance.nets import TrainedClassifier


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="runs/fractal/cfg/checkpoints/last.ckpt")
    p.add_argument("--guide-checkpoint", default="runs/fractal/cfg_autoguide_bad/checkpoints/last.ckpt")
    p.add_argument("--classifier", default="runs/fractal/classifier/checkpoints/last.ckpt")
    p.add_argument("--scales", type=float, nargs="+", default=[1.5, 2.5, 4.0])
    p.add_argument("--samples-per-class", type=int, default=1000)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--num-steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", default="runs/fractal/cfg_variant_table")
    args = p.parse_args(argv)

    diffusion = CFGDiffusion.from_checkpoint(args.checkpoint).requires_grad_(False)
    guide = CFGDiffusion.from_checkpoint(args.guide_checkpoint).requires_grad_(False) if args.guide_checkpoint else None
    classifier = TrainedClassifier(args.classifier) if args.classifier else None
    kwargs = {"num_steps": args.num_steps, **({"eta": 0.0} if args.sampler == "ddim" else {})}
    kept: dict = {}
    with torch.no_grad():
        rows = variant_table(diffusion, fractal_variants(args.guide_checkpoint), args.scales, guide=guide,
                             classifier=classifier, samples_per_class=args.samples_per_class, sampler=args.sampler,
                             sampler_kwargs=kwargs, seed=args.seed, keep_samples=kept)
    cfg_mid = [r for r in rows if r["method"] == "cfg"][len(args.scales) // 2]
    ranking = best_at_equal_wrong_class_rate(rows, cfg_mid["wrong_class_fraction"])
    intro = (f"Exact 2D fractal, {2 * args.samples_per_class} samples per row (classes alternate, seed = {args.seed} + "
             f"sample id), {args.sampler} {kwargs}, model `{args.checkpoint}`, autoguidance's worse model "
             f"`{args.guide_checkpoint}`, classifier `{args.classifier}` (classifier guidance at scale s - 1, no CFG).")
    text = markdown(rows, intro)
    text += (f"\nAt a wrong-class rate <= {cfg_mid['wrong_class_fraction']:.4f} (plain CFG at s = {cfg_mid['scale']:g}), "
             "the best row of each method by mean log-density:\n\n")
    text += "\n".join(f"- {m}: s = {r['scale']:g}, log p {r['mean_log_density']:.3f}, wrong {r['wrong_class_fraction']:.4f}, "
                      f"SW {r['sliced_wasserstein']:.4f}, spread {r['spread']:.3f}, recall {r['recall']:.3f}"
                      for m, r in ranking) + "\n"
    out = Path(args.output_dir)
    atomic_write_text(out / "table.json", json.dumps({"args": vars(args), "rows": rows}, indent=2))
    atomic_write_text(out / "table.md", text)
    mid = args.scales[len(args.scales) // 2]
    panels = [("conditional", 1.0), ("cfg", mid), ("autoguidance", mid), ("exact samples", None)]
    save_panels(out / "samples.png", [(m if s is None else f"{m} s={s:g}", *kept[(m, s)]) for m, s in panels
                                      if (m, s) in kept])
    print(text)


def save_panels(path: Path, panels: list[tuple[str, torch.Tensor, torch.Tensor]]) -> Path:
    """One scatter panel per (title, points (N, 2), labels), classes coloured, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), sharex=True, sharey=True)
    for ax, (title, x, y) in zip(axes, panels):
        for k, colour in ((0, "tab:blue"), (1, "tab:orange")):
            pts = x[y == k]
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.5, c=colour)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-2, 2)
        ax.set_ylim(-2, 2)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
