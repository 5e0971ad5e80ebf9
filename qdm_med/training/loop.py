"""The training loop shared by both stages: deterministic sampling, AdamW, EMA, warm-up, checkpoints,
exact resume, validation, rich progress, and data-parallel training (only rank 0 writes).

Sample order: the ``g``-th sample of the run (``g = (step * world + rank) * batch + j``) is item
``perm_e[g mod N]`` of epoch ``e = g // N`` (``perm_e`` a permutation seeded by ``seed + e``), so a
resumed run continues the exact sequence, and the ranks of a distributed run split each global batch.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn as nn

from qdm_med.errors import ConfigError
from qdm_med.training.checkpoint import gather_rng_states, load_checkpoint, rank_rng_state, save_checkpoint, set_rng_state
from qdm_med.training.ema import EMA

__all__ = ["fit", "batch_indices"]

logger = logging.getLogger("qdm_med.training")

CHECKPOINT = "checkpoint.pt"


def batch_indices(step: int, batch: int, n: int, seed: int, rank: int = 0, world: int = 1) -> list[tuple[int, int]]:
    """(epoch, index) of the samples of ``rank`` at ``step`` (see module docstring)."""
    out, perms = [], {}
    for j in range(batch):
        g = (step * world + rank) * batch + j
        e = g // n
        if e not in perms:
            perms[e] = torch.randperm(n, generator=torch.Generator().manual_seed(seed + e)).tolist()
        out.append((e, perms[e][g % n]))
    return out


def learning_rate(step: int, base_lr: float, warmup: int = 0, schedule: str = "constant", total: int | None = None,
                  final_fraction: float = 0.0) -> float:
    """Learning rate of ``step`` (0-based): linear warm-up over ``warmup`` steps, then ``constant`` or a
    ``cosine`` decay from ``base_lr`` at the end of warm-up to ``final_fraction * base_lr`` at ``total``."""
    if warmup and step < warmup:
        return base_lr * (step + 1) / warmup
    if schedule == "constant" or not total:
        return base_lr
    if schedule != "cosine":
        raise ValueError(f"lr_schedule {schedule!r}: use constant or cosine")
    span = max(1, int(total) - int(warmup))
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return base_lr * (final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress)))


PHASE_KEYS = ("until", "preset", "lr_schedule")


def training_phases(t_cfg: dict, train_ds) -> list[tuple[int | None, object, str]]:
    """``train.phases`` -> [(until, dataset, lr_schedule), ...]; one phase (the config's own) without it.

    A phase runs for the steps below its ``until`` (the last one may omit it: to the end) with its own
    degradation ``preset`` and ``lr_schedule`` (defaults: ``data.preset`` and ``train.lr_schedule``). The
    cosine is always the one over ``train.steps``, so a phase that switches to it joins the curve where a
    resumed run with a cosine config would. Batches depend only on the step, so one run through the phases
    equals a run stopped at each boundary and resumed with the next phase's settings.
    """
    base_schedule = str(t_cfg.get("lr_schedule", "constant"))
    phases = t_cfg.get("phases")
    if not phases:
        return [(None, train_ds, base_schedule)]
    if not isinstance(phases, list) or not all(isinstance(p, dict) for p in phases):
        raise ConfigError(f"train.phases {phases!r}: expected a list of {{until, preset, lr_schedule}} mappings")
    out, last = [], 0
    for i, p in enumerate(phases):
        unknown = set(p) - set(PHASE_KEYS)
        if unknown:
            raise ConfigError(f"train.phases[{i}]: unknown keys {sorted(unknown)} (use {', '.join(PHASE_KEYS)})")
        until = p.get("until")
        if until is None and i != len(phases) - 1:
            raise ConfigError(f"train.phases[{i}]: only the last phase may omit 'until'")
        if until is not None and int(until) <= last:
            raise ConfigError(f"train.phases[{i}]: 'until' {until} must be above the previous phase's end ({last})")
        schedule = str(p.get("lr_schedule", base_schedule))
        if schedule not in ("constant", "cosine"):
            raise ConfigError(f"train.phases[{i}].lr_schedule {schedule!r}: use constant or cosine")
        ds = train_ds.with_preset(p["preset"]) if "preset" in p else train_ds
        out.append((None if until is None else int(until), ds, schedule))
        last = int(until) if until is not None else last
    return out


def _phase_at(phases: list, step: int):
    for until, ds, schedule in phases:
        if until is None or step < until:
            return ds, schedule
    return phases[-1][1], phases[-1][2]  # past the last boundary: keep the last phase


def _collate(ds, picks, device) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds.get(i, e) for e, i in picks]
    return torch.stack([it["hr"] for it in items]).to(device), torch.stack([it["lr"] for it in items]).to(device)


def _append_log(path: Path, record: dict) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")


def _out_of_time(spent: bool, world: int, budgeted: bool) -> bool:
    """Whether a time budget is spent; rank 0's clocks decide for every rank (no rank stops alone)."""
    if world == 1 or not budgeted:
        return spent
    import torch.distributed as dist

    flag = torch.tensor([int(spent)])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def fit(stage, train_ds, val: list, settings: dict, output: Path, max_steps: int, resume: bool = False, device: torch.device | str = "cpu",
        quiet: bool = False, rank: int = 0, world: int = 1) -> dict:
    """Train ``stage.model`` for ``max_steps`` steps (total, counting resumed ones); returns a summary dict."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    device = torch.device(device)
    t_cfg, seed = settings["train"], int(settings["seed"])
    output = Path(output)
    writer = rank == 0
    if writer:
        output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = stage.model.to(device)
    if hasattr(stage, "to"):
        stage.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=float(t_cfg["lr"]), weight_decay=float(t_cfg["weight_decay"]))
    ema = EMA(model, float(t_cfg["ema_decay"]))
    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    step, cpu_before = 0, 0.0  # CPU seconds of the run's earlier segments (resume)
    if resume and (output / CHECKPOINT).is_file():
        ck = load_checkpoint(output / CHECKPOINT, map_location=device)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        ema.load_state_dict(ck["ema"])
        if ck.get("extra") is not None and hasattr(stage, "load_extra_state"):
            stage.load_extra_state(ck["extra"])
        step = int(ck["step"])
        cpu_before = float(ck.get("cpu_time_s", 0.0))
        state = rank_rng_state(ck["rng"], rank)
        if state is not None:
            set_rng_state(state, gen)
        logger.info("resumed %s at step %d", output / CHECKPOINT, step)
    elif resume:
        logger.warning("%s: no checkpoint yet; starting from step 0", output / CHECKPOINT)
    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if hasattr(stage, "set_world"):
            stage.set_world(world)
    batch, warmup = int(t_cfg["batch_size"]), int(t_cfg.get("warmup", 0))
    schedule, final_fraction = str(t_cfg.get("lr_schedule", "constant")), float(t_cfg.get("lr_final_fraction", 0.0))
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"train.lr_schedule {schedule!r}: use constant or cosine")
    phases = training_phases(t_cfg, train_ds)
    base_lr, clip = float(t_cfg["lr"]), float(t_cfg.get("grad_clip") or 0)
    every_ck, every_val, every_log = int(t_cfg["checkpoint_every"]), int(t_cfg["validate_every"]), int(t_cfg.get("log_every", 10))
    log_path = output / "log.jsonl"
    history: list[dict] = []
    t_start, last = time.perf_counter(), {}
    # time budgets (probes, equal-time comparisons): stop after the step that crosses one, saved. CPU time
    # of the run (all its segments) is what a comparison on a shared machine should equalise; wall time
    # (this segment's) is the plain cap
    budget_s = float(t_cfg["max_minutes"]) * 60.0 if t_cfg.get("max_minutes") else math.inf
    cpu_budget_s = float(t_cfg["max_cpu_minutes"]) * 60.0 if t_cfg.get("max_cpu_minutes") else math.inf
    cpu_start = time.process_time()

    def cpu_time() -> float:
        return cpu_before + time.process_time() - cpu_start

    def save(final: bool = False) -> None:
        rngs = gather_rng_states(gen)  # every rank's streams (a collective: before the writer check)
        if not writer:
            return
        extra = stage.extra_state() if hasattr(stage, "extra_state") else None
        save_checkpoint(output / CHECKPOINT, {"model": model.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                                              "step": step, "rng": rngs, "stage": stage.name, "extra": extra,
                                              "cpu_time_s": cpu_time()})
        save_checkpoint(output / "models" / "model.pt", stage.export(ema.shadow))

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeRemainingColumn()]
    with Progress(*columns, disable=quiet or not writer, transient=False) as bar:
        task = bar.add_task(f"train {settings['name']}", total=max_steps, completed=step, status="")
        model.train()
        while step < max_steps:
            t0 = time.perf_counter()
            phase_ds, phase_schedule = _phase_at(phases, step)
            lr_now = learning_rate(step, base_lr, warmup, phase_schedule, int(t_cfg["steps"]), final_fraction)
            for g in opt.param_groups:
                g["lr"] = lr_now
            hr, lr = _collate(phase_ds, batch_indices(step, batch, len(phase_ds), seed, rank, world), device)
            loss, logs = stage.loss(net, hr, lr, gen)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"loss became {float(loss)} at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            if hasattr(stage, "after_step"):
                logs.update(stage.after_step())
            ema.update(model)
            step += 1
            last = {"step": step, "loss": float(loss.detach()), "lr": lr_now, "sec_per_step": time.perf_counter() - t0, **logs}
            bar.update(task, advance=1, status=f"loss {last['loss']:.4g}  {1 / max(last['sec_per_step'], 1e-9):.2f} it/s")
            if writer and (step % every_log == 0 or step == max_steps):
                _append_log(log_path, {**last, "elapsed": time.perf_counter() - t_start, "cpu_s": cpu_time()})
            out_of_time = _out_of_time(
                time.perf_counter() - t_start >= budget_s or cpu_time() >= cpu_budget_s,
                world,
                budget_s < math.inf or cpu_budget_s < math.inf,
            )
            if writer and (step % every_val == 0 or step == max_steps or out_of_time) and val:
                ema.shadow.eval()
                scores = stage.validate(ema.shadow, val, device)
                history.append({"step": step, **scores})
                _append_log(log_path, {"step": step, "validation": scores, "elapsed": time.perf_counter() - t_start})
                logger.info("step %d: %s", step, ", ".join(f"{k} {v:.4f}" for k, v in scores.items()))
            if step % every_ck == 0 or step == max_steps or out_of_time:
                save()
            if out_of_time:
                logger.info("wall-time budget of %.1f min reached at step %d", budget_s / 60, step)
                break
    if step >= max_steps and not (output / "models" / "model.pt").exists():
        save()
    summary = {
        "bundle": settings["name"],
        "stage": stage.name,
        "steps": step,
        "final": last,
        "validation": history,
        "wall_time_s": time.perf_counter() - t_start,
        "cpu_time_s": cpu_time(),
        "output": str(output),
        "world_size": world,
    }
    if writer:
        (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
