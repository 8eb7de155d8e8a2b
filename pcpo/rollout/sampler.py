"""Rollouts: sample trajectories through a model adapter and a sampler grid.

:func:`rollout` draws every random number up front (initial noise, shared within
a group when asked, and the per-step noise) from one CPU generator, so a
trajectory does not depend on the batch size used to compute it or on the
device.  It stores everything the trainer needs in a :class:`Trajectory`, so no
algorithm re-derives what the rollout already knew.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pcpo.models.base import Cond, ModelAdapter, cond_index
from pcpo.rollout.grid import SamplerGrid


@dataclass
class Trajectory:
    """A batch of B sampled trajectories of T steps.

    ``states[:, i]`` is the input of step i and ``states[:, i + 1]`` its output;
    ``preds[:, i]`` the (guided) prediction the old policy made at step i;
    ``noise[:, i]`` the standardised noise z of step i; ``log_probs[:, i]`` its
    log-probability under the old policy.  All float32 on the CPU.
    """

    states: torch.Tensor  # (B, T + 1, *shape)
    preds: torch.Tensor  # (B, T, *shape)
    noise: torch.Tensor  # (B, T, *shape)
    log_probs: torch.Tensor  # (B, T)
    cond: Cond  # (B, ...)
    uncond: Cond | None  # (B, ...) or None without CFG
    prompts: list[str]
    metadata: list[dict]
    group_ids: torch.Tensor  # (B,)
    guidance_scale: float
    images: torch.Tensor | None = None  # (B, C, H, W) in [0, 1]
    rewards: torch.Tensor | None = None  # (B,)
    advantages: torch.Tensor | None = None  # (B,)
    extra: dict = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.states.shape[0])

    @property
    def num_steps(self) -> int:
        return int(self.log_probs.shape[1])


def draw_noise(
    batch: int,
    steps: int,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    group_ids: torch.Tensor | None = None,
    share_initial: bool = False,
    rows: tuple[int, int] | None = None,
    groups_total: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Initial states (B, *shape) and per-step noise (B, T, *shape), float32 on CPU.

    With ``share_initial`` all members of a group start from the same noise
    (DanceGRPO): the noise its first member would have had without sharing; their
    per-step noise still differs.  The stream is consumed identically either way.

    ``rows = (offset, total)``: this batch is rows ``offset .. offset + B`` of a global
    batch of ``total`` (one process's share); the noise of the whole global batch is
    drawn and sliced, so N processes see exactly what one process would.  ``group_ids``
    are then global, ``groups_total`` of them.
    """
    offset, total = rows if rows is not None else (0, batch)
    # every row's own initial noise is drawn whether or not a group shares one, so the stream is
    # consumed the same way by every framework (common random numbers across algorithms)
    x_all = torch.randn((total, *shape), generator=generator)
    if share_initial and group_ids is not None:
        if groups_total is None:  # one process: a group starts from its first member's noise
            first = torch.tensor([int((group_ids == g).nonzero()[0]) for g in group_ids.tolist()])
            x0 = x_all[offset:offset + batch][first]
        else:  # groups laid out contiguously over the global batch, total // groups_total rows each
            x0 = x_all[group_ids * (total // groups_total)]
    else:
        x0 = x_all[offset:offset + batch]
    z = torch.randn((total, steps, *shape), generator=generator)[offset:offset + batch]
    return x0, z


@torch.no_grad()
def rollout(
    adapter: ModelAdapter,
    prompts: list[str],
    grid: SamplerGrid,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    metadata: list[dict] | None = None,
    group_ids: torch.Tensor | None = None,
    share_initial_noise: bool = False,
    batch_size: int | None = None,
    reduction: str = "mean",
    progress: bool = False,
    decode: bool = True,
    predict_fn=None,
    noise_rows: tuple[int, int] | None = None,
    groups_total: int | None = None,
) -> Trajectory:
    """Sample one trajectory per prompt.

    ``predict_fn(x, t, cond, uncond, scale)`` replaces the adapter's guided
    prediction (used by implicit reward guidance); default
    ``adapter.predict_guided``.  ``noise_rows``/``groups_total``: this is one process's
    share of a global batch (see :func:`draw_noise`).
    """
    B = len(prompts)
    T = grid.num_steps
    g = adapter.default_guidance_scale if guidance_scale is None else float(guidance_scale)
    metadata = metadata if metadata is not None else [{} for _ in prompts]
    group_ids = group_ids if group_ids is not None else torch.arange(B)
    shape = tuple(adapter.latent_shape())
    x_init, z_all = draw_noise(B, T, shape, generator, group_ids, share_initial_noise, noise_rows, groups_total)

    cond = {k: v.cpu() for k, v in adapter.encode_prompts(prompts).items()}
    uncond = {k: v.cpu() for k, v in adapter.null_cond(B).items()} if g != 1.0 else None
    predict = predict_fn or adapter.predict_guided

    dev = adapter.device
    mdtype = adapter.dtype
    states = torch.empty((B, T + 1, *shape))
    preds = torch.empty((B, T, *shape))
    log_probs = torch.empty((B, T))
    states[:, 0] = x_init
    bs = batch_size or B
    chunks = [slice(i, min(i + bs, B)) for i in range(0, B, bs)]
    bar = tqdm(total=len(chunks) * T, desc="rollout", disable=not progress, leave=False)
    for sl in chunks:
        n = sl.stop - sl.start
        c = {k: v[sl].to(dev) for k, v in cond.items()}
        u = {k: v[sl].to(dev) for k, v in uncond.items()} if uncond is not None else None
        x = x_init[sl].to(dev)
        for i in range(T):
            idx = torch.full((n,), i, dtype=torch.long)
            t = grid.model_time(idx).to(dev)
            pred = predict(x.to(mdtype), t, c, u, g)
            out = grid.step(idx, pred, x, noise=z_all[sl, i].to(dev), reduction=reduction)
            x = out.prev_sample
            states[sl, i + 1] = x.float().cpu()
            preds[sl, i] = pred.float().cpu()
            log_probs[sl, i] = out.log_prob.float().cpu()
            bar.update(1)
    bar.close()
    traj = Trajectory(states, preds, z_all, log_probs, cond, uncond, list(prompts), metadata,
                      group_ids.clone(), g)
    if decode:
        traj.images = decode_batches(adapter, states[:, -1], bs)
    return traj


@torch.no_grad()
def decode_batches(adapter: ModelAdapter, x0: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, x0.shape[0], batch_size):
        out.append(adapter.decode(x0[i:i + batch_size].to(adapter.device)).float().cpu())
    return torch.cat(out)


def trajectory_index(traj: Trajectory, idx: torch.Tensor) -> Trajectory:
    """Rows ``idx`` of a trajectory batch."""
    li = idx.tolist()
    return Trajectory(
        traj.states[idx], traj.preds[idx], traj.noise[idx], traj.log_probs[idx],
        cond_index(traj.cond, idx), cond_index(traj.uncond, idx) if traj.uncond is not None else None,
        [traj.prompts[i] for i in li], [traj.metadata[i] for i in li], traj.group_ids[idx], traj.guidance_scale,
        traj.images[idx] if traj.images is not None else None,
        traj.rewards[idx] if traj.rewards is not None else None,
        traj.advantages[idx] if traj.advantages is not None else None,
        dict(traj.extra),
    )
