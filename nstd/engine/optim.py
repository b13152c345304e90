"""Optimisers over a batch of images, each image with its own state.

`torch.optim.LBFGS` flattens all parameters into one vector, so images in a batch would
share one curvature estimate and one step size. `BatchedLBFGS` keeps a separate history,
curvature scale and step per image, vectorised over the batch, with no host
synchronisation. Like neural-style, it takes a fixed step without a line search, so one
iteration is exactly one forward and backward pass.
"""

from __future__ import annotations

import torch


class BatchedLBFGS:
    """L-BFGS per image on a leaf tensor x of shape (N, ...); reads x.grad in `step`."""

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
        self._prev_g: torch.Tensor | None = None
        self._prev_step: torch.Tensor | None = None
        self._k = 0  # pairs offered so far; all images step in lockstep

    @torch.no_grad()
    def step(self) -> None:
        x = self.x
        g = x.grad.detach().reshape(x.shape[0], -1)
        if self._prev_g is not None:
            self._remember(g - self._prev_g, self._prev_step)
        direction = self._direction(g)
        if self._prev_g is None:
            # First step: scale by the gradient's size, as torch.optim.LBFGS does.
            t = (1.0 / g.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0) * self.lr
            step = direction * t[:, None]
        else:
            step = direction * self.lr
        x.add_(step.view_as(x))
        self._prev_g = g.clone()
        self._prev_step = step

    def _remember(self, y: torch.Tensor, s: torch.Tensor) -> None:
        ys = torch.linalg.vecdot(y, s)
        # Images whose pair breaks the curvature condition keep their old estimate: the
        # slot is written with rho 0, which makes it a no-op in the two-loop recursion.
        ok = ys > 1e-10
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
    def step(self) -> None:
        self._adam.step()
        if self.clamp is not None:
            self.x.clamp_(*self.clamp)


def make_optimizer(name: str, x: torch.Tensor, lr: float | None, history: int):
    if name == "lbfgs":
        return BatchedLBFGS(x, history=history, lr=1.0 if lr is None else lr)
    if name == "adam":
        return BatchedAdam(x, lr=0.02 if lr is None else lr)
    raise ValueError(f"optimizer must be lbfgs or adam, not {name!r}")
