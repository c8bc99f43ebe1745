"""Training on several processes with PyTorch's own engines: the process group ``torchrun`` sets up, FSDP2
(``fully_shard``) or DDP, and sharded checkpoints with torch.distributed.checkpoint (DCP).

Everything here also runs in one plain process (no process group): then the model is not wrapped, the
collectives are no-ops and DCP writes a single-file checkpoint that any number of processes can load.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from lrnn.device import resolve_device
from lrnn.training.optim import parameter_groups

PARALLEL_MODES = ("fsdp", "ddp")


@dataclass
class Processes:
    """This process's place among the training processes (one, or those ``torchrun`` started)."""

    rank: int
    world: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum of ``values`` over the processes (float64)."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()


def start_processes(device: str) -> Processes:
    """Join the process group if ``torchrun`` started this process (``WORLD_SIZE`` and ``RANK`` set): NCCL
    on CUDA, gloo on the CPU. ``device``: 'auto' (cuda:LOCAL_RANK when CUDA is available, else the CPU) or
    a torch device name ('cuda' means cuda:LOCAL_RANK); a device this machine lacks is a ValueError."""
    distributed = "WORLD_SIZE" in os.environ and "RANK" in os.environ
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if distributed else 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = resolve_device(device)
    if resolved.type == "cuda" and resolved.index is None:
        resolved = torch.device("cuda", local_rank)
    if resolved.type == "cuda":
        torch.cuda.set_device(resolved)
    if not distributed:
        return Processes(0, 1, resolved, False)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), resolved, True)


def stop_processes(processes: Processes) -> None:
    if processes.distributed and dist.is_initialized():
        dist.destroy_process_group()


def parallelize(model: nn.Module, blocks: nn.ModuleList, processes: Processes, *, mode: str = "fsdp",
                bfloat16: bool = False, activation_checkpointing: bool = False, compile: bool = False) -> nn.Module:
    """Prepare ``model`` (whose repeated layers are ``blocks``) for training; returns the module to call.

    Per block: activation checkpointing (non-reentrant ``torch.utils.checkpoint`` around its forward, so
    the state_dict keys stay the same) and ``torch.compile``. Then, with several processes, FSDP2 (each
    block, then the root; ``bfloat16``: ``MixedPrecisionPolicy`` with float32 gradient reduction) or DDP.
    """
    if mode not in PARALLEL_MODES:
        raise ValueError(f"mode must be one of {list(PARALLEL_MODES)}, got {mode!r}")
    for block in blocks:
        if activation_checkpointing:
            block.forward = functools.partial(torch.utils.checkpoint.checkpoint, block.forward, use_reentrant=False)
        if compile:
            block.compile()
    if not processes.distributed:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [processes.device.index] if processes.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {}
    if bfloat16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in blocks:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def groups_by_name(model: nn.Module, weight_decay: float, lr: float) -> list[dict]:
    """``parameter_groups(model, ...)`` with parameter names in place of the parameters: call it before
    ``parallelize``, whose FSDP replaces the parameters, and with them the flags the groups are chosen by."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [{**g, "params": [names[id(p)] for p in g["params"]]}
            for g in parameter_groups(model, weight_decay, lr)]


def build_optimizer(model: nn.Module, groups: list[dict], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    """AdamW over ``groups`` (from ``groups_by_name``) made of the parameters ``model`` has now (after
    sharding, as FSDP2 wants)."""
    params = dict(getattr(model, "module", model).named_parameters())  # DDP wraps; FSDP2 shards in place
    return torch.optim.AdamW([{**g, "params": [params[n] for n in g["params"]]} for g in groups], lr=lr, betas=betas)


def gradient_sync(model: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
    """A context in which backward reduces gradients over the processes only if ``enabled`` (gradient
    accumulation reduces once, on the last micro-batch): FSDP2's switch, DDP's ``no_sync``, else nothing."""
    if hasattr(model, "set_requires_gradient_sync"):
        model.set_requires_gradient_sync(enabled)
    elif hasattr(model, "no_sync") and not enabled:
        return model.no_sync()
    return contextlib.nullcontext()


def clip_gradients(model: nn.Module, max_norm: float) -> float:
    """Clip the global gradient norm (over every shard) to ``max_norm`` (0: only measure); the norm before."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


@contextlib.contextmanager
def _quiet_single_process() -> Iterator[None]:
    """DCP warns that it "assumes" a single process when there is no process group: here that is intended."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, processes: Processes) -> None:
    """Write the model and optimiser state into ``directory`` with DCP (each process its shards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    with _quiet_single_process():
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(directory),
                 no_dist=not processes.distributed)


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, directory: Path, processes: Processes) -> None:
    """Load what ``save_sharded`` wrote, on any number of processes (DCP reshards)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with _quiet_single_process():
        dcp.load(state, checkpoint_id=str(directory), no_dist=not processes.distributed)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's tensors on the CPU, gathered from the shards (on every process)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
