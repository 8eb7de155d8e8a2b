"""Implicit reward guidance (IRG) at sampling time (docs/method.md §5).

A fine-tuned model approximates the reference model tilted by its reward, so
its difference from the reference is an implicit reward direction:

    pred = pred_ref + sum_k lambda_k (pred_k - pred_ref)

computed as ``(1 - sum_k lambda_k) pred_ref + sum_k lambda_k pred_k`` so that
lambda = 0 reproduces the reference model and a single lambda = 1 the
fine-tuned model bit for bit.  Works for epsilon and velocity models alike.
"""
from __future__ import annotations

import torch

from pcpo.models.base import ModelAdapter


class ImplicitRewardGuidance:
    def __init__(self, reference: ModelAdapter, models: list[tuple[ModelAdapter, float]]):
        if not models:
            raise ValueError("IRG needs at least one fine-tuned model")
        fams = {reference.family} | {m.family for m, _ in models}
        if len(fams) != 1:
            raise ValueError("IRG models must all be of the reference model's family")
        self.reference = reference
        self.models = models

    @torch.no_grad()
    def __call__(self, x, t, cond, uncond, scale) -> torch.Tensor:
        total = sum(lam for _, lam in self.models)
        out = None
        if total != 1.0:
            out = (1.0 - total) * self.reference.predict_guided(x, t, cond, uncond, scale)
        for model, lam in self.models:
            if lam == 0.0:
                continue
            p = lam * model.predict_guided(x.to(model.dtype), t, cond, uncond, scale).to(x.dtype)
            out = p if out is None else out + p
        if out is None:  # all lambdas zero and their sum is 1: impossible; sum 0 handled above
            raise ValueError("IRG scales are all zero")
        return out
