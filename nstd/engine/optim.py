"""Optimisers over a batch of images, each image with its own state.

`torch.optim.LBFGS` flattens all parameters into one vector, so images in a batch would
share one curvature estimate and one step size. `BatchedLBFGS` keeps a separate history,
curvature scale and step per image, vectorised over the batch, with no host
synchronisation. Like neural-style, it takes a fixed step rather than a line search, so one
iteration is exactly one forward and backward pass.
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """L-BFGS per image on a leaf tensor x of shape (N, ...).

    `step(loss)` takes each image's loss at the current x and reads x.grad. An image
    whose loss rose (or is not finite) goes back to its previous point and retries
    with half the step: a line search that costs no extra evaluations, which keeps
    large style weights from blowing up the fixed-step iteration.
    """

    def __init__(self, x: torch.Tensor, history: int = 100, lr: float = 1.0):
        if history < 1:
            raise ValueError("L-BFGS history must be at least 1")
        self.x = x
        self.lr = lr
        self.m = history
        n = x.shape[0]
        d = x[0].numel()
        self._s = x.new_zeros(history, n, d)
        self._y = x.new_zeros(history, n, d)
        self._rho = x.new_zeros(history, n)
        self._gamma = x.new_ones(n)
        self._prev_x: torch.Tensor | None = None
        self._prev_f: torch.Tensor | None = None
        self._prev_g: torch.Tensor | None = None
        self._prev_step: torch.Tensor | None = None
        self._k = 0  # pairs offered so far; all images step in lockstep

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> None:
        x = self.x
        n = x.shape[0]
        flat_x = x.detach().reshape(n, -1)
        g = x.grad.detach().reshape(n, -1)
        f = loss.detach().reshape(n)
        if self._prev_g is None:
            # First step: -g scaled by its size, as torch.optim.LBFGS does. Until a
            # curvature pair is accepted, that scale also stands in for H0.
            self._gamma = (1.0 / g.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
            step = self._direction(g) * self.lr
            base = flat_x.clone()
        else:
            ok = torch.isfinite(f) & (f <= self._prev_f)
            keep = ok[:, None]
            g = torch.where(keep, g, self._prev_g)
            f = torch.where(ok, f, self._prev_f)
            base = torch.where(keep, flat_x, self._prev_x)
            self._remember(g - self._prev_g, self._prev_step, ok)
            step = torch.where(keep, self._direction(g) * self.lr, self._prev_step * 0.5)
        x.copy_((base + step).view_as(x))
        self._prev_x, self._prev_f, self._prev_g, self._prev_step = base, f, g.clone(), step

    def _remember(self, y: torch.Tensor, s: torch.Tensor, accepted: torch.Tensor) -> None:
        ys = torch.linalg.vecdot(y, s)
        # A rejected step, or a pair that breaks the curvature condition, is written with
        # rho 0: a no-op in the two-loop recursion, so that image keeps its old estimate.
        ok = accepted & (ys > 1e-10)
        slot = self._k % self.m
        self._s[slot] = s
        self._y[slot] = y
        self._rho[slot] = torch.where(ok, 1.0 / ys.clamp_min(1e-10), torch.zeros_like(ys))
        yy = torch.linalg.vecdot(y, y).clamp_min(1e-20)
        self._gamma = torch.where(ok, ys / yy, self._gamma)
        self._k += 1

    def _direction(self, g: torch.Tensor) -> torch.Tensor:
        count = min(self._k, self.m)
        order = [(self._k - 1 - j) % self.m for j in range(count)]  # newest first
        q = g.neg()
        alphas = []
        for i in order:
            a = self._rho[i] * torch.linalg.vecdot(self._s[i], q)
            q.sub_(self._y[i] * a[:, None])
            alphas.append(a)
        r = q.mul_(self._gamma[:, None])
        for i, a in zip(reversed(order), reversed(alphas)):
            b = self._rho[i] * torch.linalg.vecdot(self._y[i], r)
            r.add_(self._s[i] * (a - b)[:, None])
        return r


class BatchedAdam:
    """Adam over a batch. Adam is elementwise, so images never share state."""

    def __init__(self, x: torch.Tensor, lr: float = 0.02, clamp: tuple[float, float] | None = (0.0, 1.0)):
        self.x = x
        self.clamp = clamp
        self._adam = torch.optim.Adam([x], lr=lr)

    @torch.no_grad()
    def step(self, loss: torch.Tensor | None = None) -> None:
        self._adam.step()
        if self.clamp is not None:
            self.x.clamp_(*self.clamp)


def make_optimizer(name: str, x: torch.Tensor, lr: float | None, history: int):
    if name == "lbfgs":
        return BatchedLBFGS(x, history=history, lr=1.0 if lr is None else lr)
    if name == "adam":
        return BatchedAdam(x, lr=0.02 if lr is None else lr)
    raise ValueError(f"optimizer must be lbfgs or adam, not {name!r}")
