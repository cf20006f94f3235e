"""What the toy teachers' training loops share: AdamW (or Muon) with warmup + cosine, a progress
bar, and atomic checkpoint writes."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from mergekit_vision.engine.lr_schedule import warmup_cosine


def adamw_warmup_cosine(
    model: nn.Module,
    *,
    lr: float,
    weight_decay: float,
    warmup: int,
    steps: int,
    betas: tuple[float, float] = (0.9, 0.999),
    no_decay: tuple[nn.Parameter, ...] = (),
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (Loshchilov & Hutter, ICLR 2019) with linear warmup then cosine decay to 0.

    As in CLIP and SAM, 1-D tensors (norms, biases, scalars) and the tensors in ``no_decay``
    get no weight decay.
    """
    excluded = {id(p) for p in no_decay}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(trainable, lr=lr, weight_decay=weight_decay, betas=betas, excluded=excluded)
    return optimizer, _warmup_cosine_schedule(optimizer, warmup=warmup, steps=steps)


def _adamw(
    params: list[nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    excluded: set[int] | frozenset[int] = frozenset(),
) -> torch.optim.AdamW:
    """AdamW over ``params``; 1-D tensors and those whose ``id`` is in ``excluded`` undecayed."""
    decay = [p for p in params if p.ndim >= 2 and id(p) not in excluded]
    rest = [p for p in params if p.ndim < 2 or id(p) in excluded]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=lr,
        betas=betas,
    )


def _warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, *, warmup: int, steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    # The engine's own warmup + cosine-to-zero formula, so every training shares one.
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup=warmup, total_steps=steps)
    )


class Optimizers:
    """Optimisers over disjoint parameters, zeroed and stepped as one (with one schedule each)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


class Schedules:
    """One LR schedule per optimiser of an :class:`Optimizers`, stepped as one."""

    def __init__(self, *schedules: torch.optim.lr_scheduler.LRScheduler):
        self.schedules = schedules

    def step(self) -> None:
        for schedule in self.schedules:
            schedule.step()


def muon_warmup_cosine(
    model: nn.Module, *, lr: float, weight_decay: float, warmup: int, steps: int
) -> tuple[Optimizers, Schedules]:
    """Muon for the weight matrices of ``nn.Linear`` layers, AdamW for every other tensor, both
    with linear warmup then cosine decay to 0.

    Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") steps a
    matrix along its momentum orthogonalised by Newton-Schulz iterations; torch's
    ``torch.optim.Muon`` with ``adjust_lr_fn="match_rms_adamw"`` scales the update to AdamW's RMS
    (Liu et al. 2025, "Muon is Scalable for LLM Training", arXiv 2502.16982), so ``lr`` and
    ``weight_decay`` mean what they mean for AdamW. Embeddings, convolutions, positional tables,
    norms and biases stay with AdamW (norms and biases without decay), as Muon's authors advise.

    Raises:
        RuntimeError: this torch has no ``torch.optim.Muon`` (added in torch 2.9).
    """
    if not hasattr(torch.optim, "Muon"):
        raise RuntimeError(
            f"optimizer 'muon' needs torch.optim.Muon (torch >= 2.9; this is torch "
            f"{torch.__version__}): upgrade torch, or train with optimizer 'adamw'"
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    matrix_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    muon = torch.optim.Muon(
        [p for p in trainable if id(p) in matrix_ids],
        lr=lr,
        weight_decay=weight_decay,
        adjust_lr_fn="match_rms_adamw",
    )
    others = [p for p in trainable if id(p) not in matrix_ids]
    adamw = _adamw(others, lr=lr, weight_decay=weight_decay)
    schedules = [_warmup_cosine_schedule(o, warmup=warmup, steps=steps) for o in (muon, adamw)]
    return Optimizers(muon, adamw), Schedules(*schedules)


_COLUMNS = (
    TextColumn("[bold]{task.description}"),
    BarColumn(),
    TextColumn("{task.completed}/{task.total}"),
    TimeElapsedColumn(),
    TimeRemainingColumn(),
    TextColumn("{task.fields[status]}"),
)


class CoreShare:
    """The cores of trainings that run side by side, one thread each: the last one still running
    takes them all (checked once per step, from the training thread, where thread counts apply).

    Args:
        running: a shared ``multiprocessing.Value("i")``: how many trainings have not finished.
        cores: threads to use once this training runs alone.
    """

    def __init__(self, running: Any, cores: int):
        self.running, self.cores = running, cores

    def claim_idle(self) -> None:
        if self.running.value <= 1 and torch.get_num_threads() < self.cores:
            torch.set_num_threads(self.cores)


# Set in a worker process that trains a teacher beside another (see
# :func:`mergekit_vision.toy.teachers.ensure_toy_teachers`): its progress goes to the parent's bars.
_progress_queue: Any = None
_core_share: CoreShare | None = None


def report_progress_to(queue: Any, *, cores: CoreShare | None = None) -> None:
    """Send this process's training progress to ``queue`` as ``(description, event, value)``
    tuples (``"total"`` with the step count, then ``"advance"`` with the metrics) instead of
    drawing bars; with ``cores``, take the idle cores once the other trainings are done."""
    global _progress_queue, _core_share
    _progress_queue, _core_share = queue, cores


class StepReporter(Protocol):
    def __call__(self, *, loss: float, **metrics: float) -> None: ...


@contextmanager
def training_progress(*, total: int, description: str, enabled: bool) -> Iterator[StepReporter]:
    """A rich progress bar over ``total`` steps; the yielded callable advances it by one step and
    shows the latest loss (and any other metrics)."""
    if not enabled:
        yield lambda **_: None
        return
    if _progress_queue is not None:
        queue, share = _progress_queue, _core_share
        queue.put((description, "total", total))

        def relay(**metrics: float) -> None:
            queue.put((description, "advance", metrics))
            if share is not None:
                share.claim_idle()

        yield relay
        return
    with Progress(*_COLUMNS, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(**metrics: float) -> None:
            status = " ".join(f"{name} {value:.3f}" for name, value in metrics.items())
            progress.update(task, advance=1, status=status)

        yield advance


class ProgressRelay:
    """Bars in this process for the progress that workers send (see :func:`report_progress_to`)."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.tasks: dict[str, Any] = {}
        self.progress = Progress(*_COLUMNS, transient=False) if enabled else None

    def __enter__(self) -> ProgressRelay:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def drain(self, queue: Any, *, timeout: float) -> None:
        """Apply every queued event, waiting up to ``timeout`` s for the first."""
        import queue as queues

        try:
            event = queue.get(timeout=timeout) if timeout > 0 else queue.get_nowait()
            while True:
                self._apply(*event)
                event = queue.get_nowait()
        except queues.Empty:
            return

    def _apply(self, description: str, kind: str, value: Any) -> None:
        if self.progress is None:
            return
        if kind == "total":
            self.tasks[description] = self.progress.add_task(description, total=value, status="")
        elif description in self.tasks:
            status = " ".join(f"{name} {v:.3f}" for name, v in value.items())
            self.progress.update(self.tasks[description], advance=1, status=status)


def save_atomically(state_dict: dict[str, torch.Tensor], path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place, so a crash
    leaves either no file or the old one, never a partial checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save(state_dict, temporary)
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return path


def save_folder_atomically(write: Callable[[Path], None], path: Path) -> Path:
    """``write(folder)`` into a temporary folder beside ``path``, then move it into place (the
    old folder removed just before), so a crash leaves no half-written folder at ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(temporary)
        os.chmod(temporary, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        if path.exists():
            shutil.rmtree(path)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)
    return path
