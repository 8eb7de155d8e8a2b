"""Fully sharded data parallel training (``train.sharding: fsdp``).

DanceGRPO's 8-GPU FLUX script fine-tunes the whole transformer under FSDP
(``FULL_SHARD``, one unit per transformer block).  This module does the same with
torch's composable FSDP (``torch.distributed.fsdp.fully_shard``): every block
class the model adapter names becomes one unit, the root module the last one.

Why not accelerate's FSDP plugin: accelerate 1.16 only turns FSDP on for GPU-type
distributed modes (``AcceleratorState``: the FSDP branch is reached for MULTI_GPU,
MULTI_NPU, ..., never for MULTI_CPU), so on CPU processes its plugin is silently
ignored and the model would be wrapped in DDP instead.  torch's ``fully_shard`` runs
on gloo as well as NCCL, and it is what accelerate's FSDP2 path calls, so one code
path runs in the two-process CPU tests and on a GPU cluster.

Everything that touches sharded tensors goes through here: the wrapping, the
gradient norm (a sum over every rank's shard), and the collective gathers and
scatters of the checkpoint (full weights, optimizer state and EMA on rank 0, read
back on every rank when resuming).  Every function that gathers is a collective:
all ranks must call it.
"""
from __future__ import annotations

import torch

def is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch >= 2.4 has it
        return False
    return isinstance(t, DTensor)


def fsdp_units(module: torch.nn.Module, block_classes) -> list[torch.nn.Module]:
    """The submodules that become FSDP units: instances of ``block_classes`` (class
    names), outermost first, none nested inside another."""
    names = set(block_classes)
    units: list[torch.nn.Module] = []

    def walk(m):
        for child in m.children():
            if type(child).__name__ in names:
                units.append(child)
            else:
                walk(child)

    walk(module)
    return units


def shard(module: torch.nn.Module, block_classes, device: torch.device) -> list[torch.nn.Module]:
    """Shard ``module`` in place over every process (one mesh dimension, FULL_SHARD).
    Parameters are gathered in their own dtype, as DanceGRPO's FSDP keeps float32
    master weights and parameters (``get_mixed_precision('fp32')`` in
    fastvideo/utils/fsdp_util.py): a bf16 run computes as it would unsharded.
    Returns the units wrapped, root excluded."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not dist.is_initialized():
        raise RuntimeError("train.sharding: fsdp needs a process group; start the run with torchrun "
                           "(python -m torch.distributed.run --nproc_per_node N -m pcpo.cli train ...)")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    units = fsdp_units(module, block_classes)
    for u in units:
        fully_shard(u, mesh=mesh)
    fully_shard(module, mesh=mesh)
    return units


def grad_norm(params) -> torch.Tensor:
    """The global L2 norm of the gradients (float32), sharded or not."""
    sq = torch.zeros((), dtype=torch.float32)
    sharded = False
    for p in params:
        g = p.grad
        if g is None:
            continue
        if is_dtensor(g):
            sharded = True
            g = g.to_local()
        sq = sq.to(g.device) + g.detach().float().pow(2).sum()
    if sharded:
        import torch.distributed as dist

        dist.all_reduce(sq)
    return sq.sqrt()


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients so their global norm is at most ``max_norm`` (torch's rule,
    ``clip_coef = max_norm / (norm + 1e-6)`` clamped at 1); returns the norm before."""
    params = [p for p in params if p.grad is not None]
    norm = grad_norm(params)
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in params:
        p.grad.detach().mul_(coef.to(p.grad.device))
    return norm


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (a collective for a DTensor), on the CPU."""
    return (t.full_tensor() if is_dtensor(t) else t).detach().cpu()


def like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """``full`` laid out as ``ref``: this rank's shard when ``ref`` is sharded."""
    if is_dtensor(ref):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)
    return full.to(ref.device, ref.dtype)


def full_model_state(module: torch.nn.Module) -> dict:
    """Every weight of a sharded module, whole, on the CPU of rank 0 (all ranks call; the others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_model_state(module: torch.nn.Module, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    set_model_state_dict(module, state, options=StateDictOptions(full_state_dict=True))


def full_optimizer_state(module: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer state keyed by parameter name, whole, on rank 0 (all ranks call; the others get {})."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_optimizer_state(module: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, opt, optim_state_dict=state, options=StateDictOptions(full_state_dict=True))


__all__ = ["shard", "fsdp_units", "grad_norm", "clip_grad_norm", "full_tensor", "like",
           "full_model_state", "load_full_model_state", "full_optimizer_state", "load_full_optimizer_state",
           "is_dtensor"]
