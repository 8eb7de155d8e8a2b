"""Samplers with per-step log-probabilities, and trajectory rollouts."""
from pcpo.rollout.grid import SAMPLERS, SamplerGrid, ddim_grid, flow_grid, flow_times, make_grid, shift_times
from pcpo.rollout.sampler import Trajectory, decode_batches, draw_noise, rollout, trajectory_index
from pcpo.rollout.steps import (
    StepOutput, ddim_step, flow_step, gaussian_log_prob, matching_log_ratio, reduce_dims,
)

__all__ = [
    "SAMPLERS", "SamplerGrid", "ddim_grid", "flow_grid", "flow_times", "make_grid", "shift_times",
    "Trajectory", "decode_batches", "draw_noise", "rollout", "trajectory_index",
    "StepOutput", "ddim_step", "flow_step", "gaussian_log_prob", "matching_log_ratio", "reduce_dims",
]
