"""Lightning training step vs a plain PyTorch loop: same net, same batches, same optimizer, same loss.

Both run ``CFGDiffusion.diffusion_loss`` with AdamW on the digits UNet preset; Lightning runs ``training_step`` through
``Trainer.fit`` with logging, checkpointing, progress bar and summary off (what remains is the loop's own
bookkeeping). Both are timed over the same window of steps after ``--warmup`` steps, so the Trainer's one-off
set-up is not counted (it is printed apart). Prints the ratio Lightning / plain (goal <= 1.05).

    python bench/lightning_vs_plain.py [--steps 100] [--batch 128] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader

from common import digits_unet, machine
from lightning_guidance.data.base import InMemoryDataset, _batched
from lightning_guidance.modules.cfg_diffusion import CFGDiffusion


def make_module() -> CFGDiffusion:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CFGDiffusion(digits_unet(), schedule="cosine", lr=1e-3)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--warmup", type=int, default=10)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = InMemoryDataset(torch.rand(a.steps * a.batch, 1, 8, 8) * 2 - 1, torch.randint(0, 10, (a.steps * a.batch,)))
    loader = DataLoader(data, batch_size=a.batch, collate_fn=_batched)

    window: dict[str, float] = {}

    def plain():
        module = make_module()
        opt = module.configure_optimizers()["optimizer"]
        for i, (x, y) in enumerate(loader):
            if i == a.warmup:
                start = time.perf_counter()
            loss = module.diffusion_loss(x, y, 0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        window["plain"] = time.perf_counter() - start

    class Window(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == a.warmup:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            window["lightning"] = time.perf_counter() - self.start

    def lightning():
        start = time.perf_counter()
        module = make_module()
        trainer = L.Trainer(max_steps=a.steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                            callbacks=[Window()])
        trainer.fit(module, train_dataloaders=loader)
        window["lightning_total"] = time.perf_counter() - start

    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    ratios, per_step = [], {"plain": [], "lightning": []}
    for _ in range(a.repeats):  # alternate, so that load drifts hit both alike
        plain()
        lightning()
        ratios.append(window["lightning"] / window["plain"])
        for k in per_step:
            per_step[k].append(window[k] / (a.steps - a.warmup) * 1e3)
    setup = window["lightning_total"] - window["lightning"]
    print(f"machine: {machine()}")
    print(f"steps {a.warmup}..{a.steps}, batch {a.batch}: plain {statistics.median(per_step['plain']):.2f} ms/step, "
          f"lightning {statistics.median(per_step['lightning']):.2f} ms/step (+ {setup:.2f} s one-off Trainer set-up "
          f"and first {a.warmup} steps)")
    print(f"ratio lightning / plain (median of {a.repeats}): {statistics.median(ratios):.3f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
