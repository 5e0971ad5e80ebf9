"""Data-parallel training with torchrun (PyTorch DDP; gloo on CPU, nccl on GPU; only rank 0 writes).

    torchrun --nproc_per_node 4 -m qdm_med.training.ddp bundles/qdm_ct_x8 --corpus
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --master_port 29500 --nproc_per_node 8 \\
        -m qdm_med.training.ddp bundles/qdm_ct_x8 --data /data/segrap

Each rank draws its share of every global batch (see :mod:`qdm_med.training.loop`); DDP averages the
gradients, so all replicas hold identical weights after every step. The effective batch is
``batch_size x world_size``.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist

__all__ = ["init_distributed", "main"]


def init_distributed(device: str = "auto") -> tuple[int, int]:
    """Join the process group torchrun describes in the environment; returns (rank, world size)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return rank, world


def main(argv: list[str] | None = None) -> int:
    from qdm_med.errors import QDMError
    from qdm_med.training.api import train_bundle, train_recipe

    p = argparse.ArgumentParser(prog="python -m qdm_med.training.ddp", description="Data-parallel qdm-med training (run under torchrun).")
    p.add_argument("bundle")
    p.add_argument("--data")
    p.add_argument("--corpus", action="store_true")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--output")
    p.add_argument("--config", default=None, help="one stage config (default: the bundle's whole recipe)")
    p.add_argument("--init-from")
    p.add_argument("-q", "--quiet", action="store_true")
    a = p.parse_args(argv)
    rank, world = init_distributed(a.device)
    try:
        common = dict(data=a.data, corpus=a.corpus, max_steps=a.max_steps, resume=a.resume, device=a.device, output=a.output,
                      quiet=a.quiet or rank != 0, rank=rank, world=world)
        if a.config is None:
            if a.init_from:
                raise QDMError("--init-from sets one stage's starting weights: give --config too")
            train_recipe(a.bundle, **common)
        else:
            train_bundle(a.bundle, config=a.config, init_from=a.init_from, **common)
    except QDMError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
