"""What a study's analysis reads: the steps of a run, how each ended, and what the finished ones wrote (their
configs, shards and product files), plus what earlier analyses of the same report computed."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..io.shards import manifest_shards, read_extra, read_shard
from .steps import DONE_STATES, Step


class Products:
    """What a section's analysis reads: the preset, the steps and how they ended, their products, and the results
    of the sections analysed before it."""

    def __init__(self, preset, run_dir: Path, steps: dict[str, Step], status: dict[str, str]):
        self.preset, self.run_dir, self.steps, self.status = preset, Path(run_dir), steps, status
        self.results: dict = {}  # the sections analysed so far: {key: their result}
        self.memo: dict = {}  # what several sections read and one computes once (e.g. the digits tables)

    def ok(self, name: str) -> bool:
        return self.status.get(name) in DONE_STATES

    def step(self, name: str) -> Step:
        """A finished step; ``LookupError`` naming it (and, when it was blocked, the inputs that failed) if not."""
        if not self.ok(name):
            bad = [n for n in self.steps[name].needs if not self.ok(n)] if name in self.steps else []
            why = f" ({self.failed_inputs(bad).removeprefix('inputs failed: ')})" if bad else ""
            raise LookupError(f"input step {name} {self.status.get(name, 'did not run')}{why}")
        return self.steps[name]

    def config_value(self, name: str, dotted: str):
        """A value of the config the step ran with (``runs/<name>/configs/<step>.yaml``)."""
        node = yaml.safe_load((self.run_dir / "configs" / f"{name}.yaml").read_text())
        for part in dotted.split("."):
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def samples(self, name: str, trajectories: bool = False) -> dict[float, tuple]:
        """``{sweep value: (samples, labels[, trajectories (steps + 1, N, ...)])}`` of a finished ``predict`` step."""
        import torch

        out = {}
        for value, paths in manifest_shards(self.step(name).out_dir).items():
            shards = [read_shard(p) for p in paths]
            got = (torch.cat([s.samples for s in shards]), torch.cat([s.labels for s in shards]))
            if trajectories:
                got += (torch.cat([torch.from_numpy(read_extra(p, "trajectory")) for p in paths], dim=1),)
            out[float(value)] = got
        return out

    def failed_inputs(self, names: list[str]) -> str:
        bad = [f"{n} {self.status.get(n, 'not planned')}" for n in names if not self.ok(n)]
        return "inputs failed: " + ", ".join(bad) if bad else "no inputs"
