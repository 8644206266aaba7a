"""Checks, before anything starts, that a run's processes fit the machine and the environment that launched it.

Lightning would otherwise start and then fail deep inside (or wait forever for a node that never comes): a
``--trainer.num_nodes 2`` started by hand on one machine waits at the rendezvous for node 1. Each check raises one
``ValueError`` line that names the value and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def _as_int(value) -> int | None:
    """An int-like devices/num_nodes value, or None for 'auto', -1, lists and the like (Lightning resolves those)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 1 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def available_devices(accelerator: str | None) -> tuple[int, str]:
    """(how many devices of this accelerator this machine has, their name)."""
    import torch

    accelerator = (accelerator if isinstance(accelerator, str) else "auto").lower()
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "CUDA GPUs"
    if accelerator == "mps":
        return int(torch.backends.mps.is_available()), "MPS devices"
    if accelerator in ("cpu", "auto"):
        return os.cpu_count() or 1, "CPU cores"
    return 0, f"{accelerator} devices"  # an accelerator we do not know how to count: Lightning checks it


def check_trainer_resources(accelerator: str | None, devices, num_nodes, env: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` when ``devices`` exceeds this machine or ``num_nodes`` contradicts the environment.

    Environment read: SLURM (``SLURM_NNODES``, ``SLURM_NTASKS_PER_NODE`` of an ``srun`` step), and the variables
    a cluster launcher sets for Lightning (``WORLD_SIZE``, ``NODE_RANK``/``GROUP_RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``).
    """
    env = os.environ if env is None else env
    per_node, nodes = _as_int(devices), _as_int(num_nodes) or 1
    if isinstance(accelerator, str) and accelerator.lower() in ("gpu", "cuda", "mps"):
        have, what = available_devices(accelerator)
        if not have:
            raise ValueError(f"--trainer.accelerator {accelerator} but this machine has no {what}: use "
                             "--trainer.accelerator cpu (or auto, which takes a GPU when there is one)")
    if per_node is not None and (accelerator is None or isinstance(accelerator, str)):
        have, what = available_devices(accelerator)
        if have and per_node > have:
            raise ValueError(f"--trainer.devices {per_node} but this machine has {have} {what}: use at most {have} "
                             "per node (more nodes: --trainer.num_nodes)")
    in_srun = "SLURM_STEP_ID" in env and "SLURM_NNODES" in env
    if in_srun:
        slurm_nodes = int(env["SLURM_NNODES"])
        if nodes != slurm_nodes:
            raise ValueError(f"--trainer.num_nodes {nodes} but SLURM gave this step {slurm_nodes} node(s) "
                             f"(SLURM_NNODES): pass --trainer.num_nodes {slurm_nodes} or sbatch --nodes={nodes}")
        tasks = env.get("SLURM_NTASKS_PER_NODE", "").split("(")[0]
        if per_node is not None and tasks.isdigit() and per_node != int(tasks):
            raise ValueError(f"--trainer.devices {per_node} but SLURM starts {tasks} task(s) per node "
                             f"(SLURM_NTASKS_PER_NODE): one task per device, pass --trainer.devices {tasks}")
        return
    launched = "LOCAL_RANK" in env  # a launcher started this process and tells it its place
    if launched and per_node is not None and "WORLD_SIZE" in env and int(env["WORLD_SIZE"]) != nodes * per_node:
        raise ValueError(f"--trainer.num_nodes {nodes} x --trainer.devices {per_node} = {nodes * per_node} processes, "
                         f"but the launcher says WORLD_SIZE={env['WORLD_SIZE']}: make them agree")
    node_rank = env.get("NODE_RANK", env.get("GROUP_RANK"))
    if node_rank is not None and node_rank.isdigit() and int(node_rank) >= nodes:
        raise ValueError(f"NODE_RANK={node_rank} but --trainer.num_nodes {nodes}: node ranks run from 0 to {nodes - 1}")
    if nodes > 1 and not (launched and "MASTER_ADDR" in env):
        raise ValueError(f"--trainer.num_nodes {nodes} but nothing launched this process as one of {nodes} nodes: "
                         "start it with srun (SLURM), or on each node with MASTER_ADDR, MASTER_PORT, NODE_RANK, "
                         "LOCAL_RANK and WORLD_SIZE set (see slurm/README.md)")
