"""Data-parallel training under ``torchrun``: process group, DDP or FSDP2, consolidated state.

One process alone (no ``WORLD_SIZE`` in the environment) gets a world of size 1 and every helper
here is a no-op, so the engine has one code path.

Gradient flow (see docs/distributed.md): the engine runs one backward per task. Every task's last
(synchronised) backward averages its gradient over the ranks, DDP's all-reduce or FSDP2's
reduce-scatter, so the per-task gradient the engine records (:mod:`.gradients`) is already the
average over all ranks, identical on every rank, and the strategies read the same rows everywhere.
Gradients of parameters outside the wrapped model (learnable loss weights) are averaged by
:meth:`Parallel.sync_extra`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from mergekit_vision.contracts import Prompts
from mergekit_vision.engine.build import MergedModel


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world ``torchrun`` describes in the environment (size 1 without it)."""
    return World(
        rank=int(os.environ.get("RANK", 0)),
        size=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def init_world(*, device: str, timeout_s: float = 1800.0) -> World:
    """Join the process group ``torchrun`` set up: nccl on GPUs, gloo on CPU.

    With CUDA each process takes GPU ``local_rank`` before anything is built on ``"cuda"``.
    """
    world = world_from_env()
    if not world.distributed:
        return world
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(world.local_rank)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return world


def close_world() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def mean_over_ranks(values: dict[str, float], world: World) -> dict[str, float]:
    """Each value averaged over the ranks (the same keys on every rank)."""
    if not world.distributed or not values:
        return values
    names = sorted(values)
    stacked = torch.tensor([values[n] for n in names], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(stacked)
    return {n: float(v) / world.size for n, v in zip(names, stacked.tolist(), strict=True)}


def gather_rows(rows: Tensor) -> Tensor:
    """``[B, ...]`` from every rank concatenated ``[N*B, ...]`` in rank order (same B per rank)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return rows
    parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, rows.contiguous())
    return torch.cat(parts)


def _comm_device() -> torch.device:
    """nccl moves CUDA tensors only; gloo moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class HeadForward(nn.Module):
    """Student then one head: the forward DDP wraps, so one wrapper serves every task."""

    def __init__(self, model: MergedModel):
        super().__init__()
        self.model = model

    def forward(self, images: Tensor, *, head: str, prompts: Prompts | None) -> dict[str, Tensor]:
        chosen = self.model.heads[head]
        blocks = getattr(chosen, "student_blocks", ())
        return chosen(self.model.student(images, blocks=blocks), prompts=prompts)


class Parallel:
    """The model's data-parallel wrapping for one stage.

    Args:
        model: the merged model (already holding the weights to start from).
        world: this process's place.
        strategy: ``"ddp"`` or ``"fsdp"``.
        device: where the model lives.
    """

    def __init__(self, model: MergedModel, *, world: World, strategy: str, device: torch.device):
        self.model, self.world, self.strategy, self.device = model, world, strategy, device
        self._ddp: nn.Module | None = None
        self.sharded = world.distributed and strategy == "fsdp"
        if self.sharded:
            shard_model(model)

    def start_stage(self) -> None:
        """(Re)wrap after the stage chose which parameters train: DDP registers them once."""
        if not self.world.distributed or self.sharded:
            return
        from torch.nn.parallel import DistributedDataParallel

        self._ddp = None  # drop the previous stage's reducer and its hooks first
        cuda = self.device.type == "cuda"
        with warnings.catch_warnings():
            # torch 2.14 renames broadcast_buffers; the old name keeps older versions working
            warnings.simplefilter("ignore", FutureWarning)
            self._ddp = DistributedDataParallel(
                HeadForward(self.model),
                device_ids=[torch.cuda.current_device()] if cuda else None,
                find_unused_parameters=True,  # a task's forward uses one head of several
                # buffers (target statistics) stay equal by construction: normalizers update
                # from every rank's targets
                broadcast_buffers=False,
            )

    def forward_fn(self) -> nn.Module | None:
        """The DDP-wrapped ``(images, head=, prompts=) -> predictions`` task steps must run;
        None where the plain student and head calls do (one process, FSDP's own hooks)."""
        return self._ddp

    @contextlib.contextmanager
    def sync(self, enabled: bool) -> Iterator[None]:
        """Backward passes inside accumulate locally unless ``enabled`` (the last micro-batch)."""
        if enabled or not self.world.distributed:
            yield
        elif self._ddp is not None:
            with self._ddp.no_sync():  # type: ignore[operator]
                yield
        else:
            modules = _fsdp_modules(self.model)
            for m in modules:
                m.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                for m in modules:
                    m.set_requires_gradient_sync(True)

    def reshard(self) -> None:
        """Put FSDP's sharded parameters back in their modules.

        A root unit stays gathered after its forward until a backward reshards it; one that ran
        without one (frozen, or in ``no_grad`` evaluation) would otherwise leave gathered copies
        in place for the next stage's optimiser or the checkpoint to pick up.
        """
        if self.sharded:
            for m in _fsdp_modules(self.model):
                m.reshard()

    def sync_extra(self, params: list[nn.Parameter]) -> None:
        """Average the gradients of parameters outside the wrapped model (loss weights)."""
        if not self.world.distributed:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world.size
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


def shard_model(model: MergedModel) -> None:
    """FSDP2 over the student and each head, independent roots the task step calls directly.

    The student's ``shard_units()`` (its transformer blocks) are sharded one unit each, so only
    one block's full parameters are gathered at a time; the rest of the student (patch
    embedding, neck) forms the student's own unit.
    """
    from torch.distributed.fsdp import fully_shard

    for unit in model.student.shard_units():
        fully_shard(unit)
    fully_shard(model.student)
    for head in model.heads.values():
        if any(True for _ in head.parameters()):
            fully_shard(head)


def _fsdp_modules(model: nn.Module) -> list[Any]:
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _is_dtensor(value: Any) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def full_model_state(model: nn.Module) -> dict[str, Tensor]:
    """The whole model's weights as plain CPU tensors (shards gathered; every rank calls it)."""
    out = {}
    for name, value in model.state_dict().items():
        if _is_dtensor(value):
            value = value.full_tensor()
        out[name] = value.detach().contiguous().cpu()
    return out


def full_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with sharded state gathered: the single-process format."""
    saved = optimizer.state_dict()
    state = {
        index: {k: (v.full_tensor() if _is_dtensor(v) else v) for k, v in entry.items()}
        for index, entry in saved["state"].items()
    }
    return {"state": state, "param_groups": saved["param_groups"]}


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """Load a single-process optimiser state, sharding it like the parameters it belongs to."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in saved["state"].items():
        param = params[int(index)]
        if _is_dtensor(param):
            entry = {
                k: distribute_tensor(v.to(param.device), param.device_mesh, param.placements)
                if isinstance(v, Tensor) and v.shape == param.shape
                else v
                for k, v in entry.items()
            }
        state[index] = entry
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
