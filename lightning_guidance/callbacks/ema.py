"""EMA of the weights via Lightning's weight-averaging callback, with the usual warm-up of the decay.

``decay_n = min(decay, (1 + n) / (10 + n))`` after n updates (as in many diffusion codebases), so that short
runs are not dominated by the random initialisation. Checkpoints carry the EMA weights in ``state_dict``
(what sampling loads) and the raw weights in ``current_model_state`` (what resuming loads).
"""

from __future__ import annotations

from lightning.pytorch.callbacks import WeightAveraging
from torch import Tensor


class EMA(WeightAveraging):
    """Exponential moving average of the weights; checkpoints carry it in ``state_dict`` (what sampling loads).

    Args:
        decay: EMA decay in (0, 1), e.g. 0.999 (per update; with ``warmup``, ``min(decay, (1 + n) / (10 + n))``).
        warmup: warm the decay up over the first updates (short runs are not dominated by the initial weights).
        update_every_n_steps: update the average every N optimizer steps (>= 1).
    """

    def __init__(self, decay: float = 0.9999, warmup: bool = True, update_every_n_steps: int = 1):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        if update_every_n_steps < 1:
            raise ValueError(f"update_every_n_steps must be >= 1, got {update_every_n_steps}")
        self.decay = decay
        self.warmup = warmup
        self.update_every_n_steps = update_every_n_steps
        super().__init__(avg_fn=self._average, use_buffers=True)

    def _average(self, averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        n = float(num_averaged)
        decay = min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay
        return averaged + (current - averaged) * (1 - decay)

    def on_train_end(self, trainer, pl_module) -> None:
        # Lightning's callback copies the average into the live weights here; ModelCheckpoint then saves
        # last.ckpt with the *EMA* as the raw weights and a resume would continue from the wrong weights.
        # Keep the raw weights live: every checkpoint already carries the EMA in ``state_dict``.
        return None

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx % self.update_every_n_steps == 0
