"""The GaLore AdamW optimizer (Zhao et al., 2024, Algorithm 1), in plain torch."""

from __future__ import annotations

import math

import torch


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose moments, for groups with a ``rank``, live in a low-rank projection of the gradient."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            rank = group.get("rank")
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                state["step"] = state.get("step", 0) + 1
                if rank is not None:
                    if state["step"] % group["update_proj_gap"] == 1 or "proj" not in state:
                        state["proj"] = _projection(grad, rank)
                        state.pop("exp_avg", None)  # moments of the old subspace no longer apply
                        state.pop("exp_avg_sq", None)
                    grad = _project(grad, state["proj"])
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(grad)
                    state["exp_avg_sq"] = torch.zeros_like(grad)
                    state["moment_step"] = 0
                state["moment_step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                t = state["moment_step"]
                step_size = group["lr"] * math.sqrt(1 - beta2**t) / (1 - beta1**t)
                update = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
                if rank is not None:
                    update = _project_back(update, state["proj"]) * group["scale"]
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-step_size)
        return loss


def _projection(grad: torch.Tensor, rank: int) -> tuple[torch.Tensor, bool]:
    """Top-``rank`` singular vectors on the smaller side of the gradient, and whether they act on the right."""
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    if grad.shape[0] >= grad.shape[1]:
        return vh[:rank].t().contiguous().to(grad.dtype), True  # n x r
    return u[:, :rank].contiguous().to(grad.dtype), False  # m x r


def _project(grad, proj):
    matrix, right = proj
    return grad @ matrix if right else matrix.t() @ grad


def _project_back(update, proj):
    matrix, right = proj
    return update @ matrix.t() if right else matrix @ update
