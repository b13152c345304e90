"""Optimisers over a batch of images, each image with its own state.

`torch.optim.LBFGS` flattens all parameters into one vector, so images in a batch would
share one curvature estimate and one step size. `BatchedLBFGS` keeps a separate history,
curvature scale and step per image. Like neural-style, it takes a fixed step rather than
a line search, so one iteration is exactly one forward and backward pass.

Both optimisers keep all their state in fixed buffers updated in place and never read a
value back to the host, so a whole iteration can be captured as a CUDA graph.
"""

from __future__ import annotations

import torch

from nstd.engine.losses import bf16_products
from nstd.engine.switches import exact_matmul


class BatchedLBFGS:
    """L-BFGS per image on a leaf tensor x of shape (N, ...).

    `step(loss)` takes each image's loss at the current x and reads x.grad. An image
    whose loss rose (or is not finite) goes back to its previous point and retries
    with half the step: a line search that costs no extra evaluations, which keeps
    large style weights from blowing up the fixed-step iteration.

    With `clamp`, each step is projected onto the displayable range, and the projected
    step is what the history records. Clamping only the final image cost 7-23% of the
    objective a saved picture scores (benchmarks/RESULTS.md); projecting each step
    reached the unclamped run's objective with every pixel in range.

    The direction uses the compact form of Byrd, Nocedal and Schnabel (1994) rather
    than the two-loop recursion: every dot product with the history is one batched
    matrix product, so a step reads the history twice in a handful of kernels instead
    of four times in several hundred, and the history needs no ordering on the host.

    With `dtype` bf16 the history (by far the largest state: 2 x `history` copies of the
    image) is stored in half the memory and read at half the traffic. Each pair is
    rounded once as it is stored, and every dot product is taken of the rounded pair in
    fp32, so the curvature matrices stay exactly those of the stored pairs and the
    inverse-Hessian estimate stays positive definite.
    """

    def __init__(self, x: torch.Tensor, history: int = 100, lr: float = 1.0,
                 clamp: tuple[float, float] | None = (0.0, 1.0), dtype: torch.dtype = torch.float32):
        if history < 1:
            raise ValueError("L-BFGS history must be at least 1")
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"L-BFGS history must be float32 or bfloat16, not {dtype}")
        self.x = x
        self.lr = lr
        self.clamp = clamp
        self.m = m = history
        n, d = x.shape[0], x[0].numel()
        z = dict(device=x.device, dtype=torch.float32)
        # Rows 0..m-1 hold the steps s, rows m..2m-1 the gradient changes y, in ring slots.
        self._w = torch.zeros(n, 2 * m, d, device=x.device, dtype=dtype)
        self._mm = _Products(dtype, x.device)
        self._sy = torch.zeros(n, m, m, **z)  # s_i . y_j by slot
        self._yy = torch.zeros(n, m, m, **z)  # y_i . y_j by slot
        self._count = torch.zeros(n, dtype=torch.long, device=x.device)  # pairs accepted
        self._gamma = torch.ones(n, **z)
        self._prev_x = torch.zeros(n, d, **z)
        self._prev_g = torch.zeros(n, d, **z)
        self._prev_step = torch.zeros(n, d, **z)
        self._prev_f = torch.zeros(n, **z)
        self._slots = torch.arange(m, device=x.device)
        self._rows = torch.arange(n, device=x.device)
        # An image on its first step: it has no previous point to compare with and no pairs.
        self._fresh = torch.ones(n, dtype=torch.bool, device=x.device)

    @torch.no_grad()
    def reset(self, k: int) -> None:
        """Forget image k's history: a new image takes its place in the batch."""
        for buf in (self._w, self._sy, self._yy, self._count, self._prev_x, self._prev_g, self._prev_step,
                    self._prev_f):
            buf[k] = 0
        self._gamma[k] = 1.0
        self._fresh[k] = True

    @torch.no_grad()
    def select(self, rows: torch.Tensor, x: torch.Tensor) -> "BatchedLBFGS":
        """The state of images `rows` only, now driving `x` (those images' pixels): a batch
        left with a few working images goes on without the rest."""
        out = BatchedLBFGS(x, self.m, self.lr, self.clamp, self._w.dtype)
        for name in ("_w", "_sy", "_yy", "_count", "_gamma", "_prev_x", "_prev_g", "_prev_step", "_prev_f",
                     "_fresh"):
            getattr(out, name).copy_(getattr(self, name)[rows])
        return out

    @torch.no_grad()
    def step(self, loss: torch.Tensor) -> None:
        with exact_matmul():
            self._step(loss)

    def _step(self, loss: torch.Tensor) -> None:
        x = self.x
        n = x.shape[0]
        flat_x = x.detach().reshape(n, -1).float()
        g = x.grad.detach().reshape(n, -1).float()
        f = loss.detach().reshape(n).float()
        fresh = self._fresh
        # First step: -g scaled by its size, as torch.optim.LBFGS does. Until a curvature
        # pair is accepted, that scale also stands in for H0. A fresh image is always
        # accepted and stores no pair, so its empty history makes the direction -gamma g.
        ok = fresh | (torch.isfinite(f) & (f <= self._prev_f))
        keep = ok[:, None]
        g = torch.where(keep, g, self._prev_g)
        f = torch.where(ok, f, self._prev_f)
        base = torch.where(keep, flat_x, self._prev_x)
        dots = self._remember(g - self._prev_g, self._prev_step, g, ok & ~fresh)
        first = (1.0 / g.abs().sum(1).clamp_min(1e-12)).clamp(max=1.0)
        self._gamma.copy_(torch.where(fresh, first, self._gamma))
        step = torch.where(keep, self._direction(g, dots) * self.lr, self._prev_step * 0.5)
        fresh.fill_(False)
        if self.clamp is not None:
            step = self._project(base, step, g)
        x.copy_((base + step).view_as(x))
        self._prev_x.copy_(base)
        self._prev_f.copy_(f)
        self._prev_g.copy_(g)
        self._prev_step.copy_(step)

    def _project(self, base: torch.Tensor, step: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The step kept in range. Where projecting turned it uphill (pixels pinned at a
        bound), the projected gradient step is taken instead, which always goes down."""
        step = (base + step).clamp(*self.clamp) - base
        fallback = (base - self._gamma[:, None] * g).clamp(*self.clamp) - base
        uphill = torch.linalg.vecdot(g, step) >= 0
        return torch.where(uphill[:, None], fallback, step)

    def _remember(self, y: torch.Tensor, s: torch.Tensor, g: torch.Tensor,
                  accepted: torch.Tensor) -> torch.Tensor:
        """Store the pair (s, y) where it is accepted; return the history's dots with g."""
        m, rows = self.m, self._rows
        # The pair as the history will hold it, so its dots agree with what is stored.
        s, y = _stored(s, self._w.dtype), _stored(y, self._w.dtype)
        ys = torch.linalg.vecdot(y, s)
        # A rejected step, or a pair that breaks the curvature condition, is not stored,
        # so that image keeps its old estimate (torch.optim.LBFGS does the same).
        ok = accepted & (ys > 1e-10)
        slot = self._count % m
        keep = ok[:, None]
        dtype = self._w.dtype
        self._w[rows, slot] = torch.where(keep, s.to(dtype), self._w[rows, slot])
        self._w[rows, slot + m] = torch.where(keep, y.to(dtype), self._w[rows, slot + m])
        self._count.add_(ok.long())
        # One pass over the history gives the new pair's dots and the gradient's. The
        # products go image by image: for a batch of these long, thin matrices cuBLAS
        # picks a slow kernel (docs/performance.md has the measurement).
        v = torch.stack([s, y, g], 2)
        dots = torch.stack([self._mm.dots(self._w[i], v[i]) for i in range(len(v))])  # (n, 2m, 3)
        s_dot_y_new, y_dot_s_new, y_dot_y_new = dots[:, :m, 1], dots[:, m:, 0], dots[:, m:, 1]
        col = (self._slots[None] == slot[:, None]) & keep  # (n, m): the written slot
        self._sy.copy_(torch.where(col[:, None, :], s_dot_y_new[:, :, None], self._sy))
        self._sy.copy_(torch.where(col[:, :, None], y_dot_s_new[:, None, :], self._sy))
        self._yy.copy_(torch.where(col[:, None, :], y_dot_y_new[:, :, None], self._yy))
        self._yy.copy_(torch.where(col[:, :, None], y_dot_y_new[:, None, :], self._yy))
        yy = torch.linalg.vecdot(y, y).clamp_min(1e-20)
        self._gamma.copy_(torch.where(ok, ys / yy, self._gamma))
        return dots[:, :, 2]

    def _direction(self, g: torch.Tensor, dots: torch.Tensor) -> torch.Tensor:
        """-H g with H0 = gamma I and the stored pairs, per image."""
        gamma = self._gamma[:, None]
        m = self.m
        # Chronological order of the ring, oldest first. While it is filling, the empty
        # slots come last and are made exact no-ops below.
        count = self._count[:, None]
        start = torch.where(count >= m, count % m, torch.zeros_like(count))
        perm = (start + self._slots[None]) % m  # (n, m)
        valid = self._slots[None] < count  # by chronological position
        sy = _permute(self._sy, perm)
        yy = _permute(self._yy, perm)
        sg = dots[:, :m].gather(1, perm)
        yg = dots[:, m:].gather(1, perm)
        # R is upper-triangular s_i . y_j (i <= j); D its diagonal. An empty slot has a zero
        # row and column, so a unit diagonal there leaves its coefficients at zero.
        r = torch.triu(sy) + torch.diag_embed((~valid).float())
        d = torch.diagonal(sy, dim1=1, dim2=2)
        t = _solve(r, sg[:, :, None], upper=True)
        w = d[:, :, None] * t + gamma[:, :, None] * (yy @ t) - gamma[:, :, None] * yg[:, :, None]
        u = _solve(r.transpose(1, 2), w, upper=False)
        coef = torch.zeros(g.shape[0], 2 * m, device=g.device, dtype=g.dtype)
        coef.scatter_(1, perm, u[:, :, 0])
        coef.scatter_(1, perm + m, -gamma * t[:, :, 0])
        hg = gamma * g + torch.stack([self._mm.combine(coef[i], self._w[i]) for i in range(len(coef))])
        return -hg


def _stored(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t rounded as a history of `dtype` keeps it, in fp32."""
    return t if dtype == torch.float32 else t.to(dtype).float()


class _Products:
    """The history's two products in fp32, whichever dtype it is stored in. A bf16 history
    goes into one product with an fp32 output where the device has one (CUDA); elsewhere
    it is widened a slice at a time, so no fp32 copy of a whole image's history is made."""

    SLICE = 1 << 16  # pixels widened at once: 2 x history x 64 K fp32 values, 51 MB at 100

    def __init__(self, dtype: torch.dtype, device: torch.device):
        self.narrow = dtype != torch.float32
        self.fused = self.narrow and bf16_products(device)

    def dots(self, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """w @ v: (2m, d) history rows with (d, k) vectors -> (2m, k)."""
        if not self.narrow:
            return w @ v
        if self.fused:
            k = v.shape[1]
            out = _fp32_product(w[None], torch.cat(_split(v), 1)[None])[0]
            return out[:, :k] + out[:, k:]
        out = torch.zeros(w.shape[0], v.shape[1], device=v.device, dtype=torch.float32)
        for lo in range(0, w.shape[1], self.SLICE):
            out.addmm_(w[:, lo:lo + self.SLICE].float(), v[lo:lo + self.SLICE])
        return out

    def combine(self, coef: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """coef @ w: (2m,) coefficients of the history rows -> (d,)."""
        if not self.narrow:
            return coef @ w
        if self.fused:
            both = _fp32_product(torch.stack(_split(coef))[None], w[None])[0]
            return both[0] + both[1]
        return torch.cat([coef @ w[:, lo:lo + self.SLICE].float() for lo in range(0, w.shape[1], self.SLICE)])


def _split(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 values as two bf16 parts whose sum holds 16 of their 24 bits. A fused product
    takes both operands in bf16; rounding the gradient or the two-loop coefficients to 8
    bits as well would add an error the stored history does not have."""
    hi = v.to(torch.bfloat16)
    return hi, (v - hi.float()).to(torch.bfloat16)


def _fp32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b of bf16 batches with an fp32 result: the very product `bf16_products` tries."""
    return torch.bmm(a, b, out_dtype=torch.float32)


def _solve(a: torch.Tensor, b: torch.Tensor, upper: bool) -> torch.Tensor:
    """Triangular solves one image at a time. The systems are tiny (history x history),
    and this single-matrix path is the one measured inside CUDA graphs on an H100."""
    return torch.cat([torch.linalg.solve_triangular(a[i:i + 1], b[i:i + 1], upper=upper)
                      for i in range(a.shape[0])])


def _permute(a: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """a[n][perm[n]][:, perm[n]] for each n."""
    n, m, _ = a.shape
    rows = a.gather(1, perm[:, :, None].expand(n, m, m))
    return rows.gather(2, perm[:, None, :].expand(n, m, m))


class BatchedAdam:
    """Adam over a batch, as torch.optim.Adam computes it, but with a step count per image:
    an image that joins a running batch gets its own bias correction from its first step."""

    def __init__(self, x: torch.Tensor, lr: float = 0.02, clamp: tuple[float, float] | None = (0.0, 1.0),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.x, self.lr, self.clamp, self.betas, self.eps = x, lr, clamp, betas, eps
        self._m = torch.zeros_like(x, dtype=torch.float32)
        self._v = torch.zeros_like(x, dtype=torch.float32)
        self._t = torch.zeros((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device)

    @torch.no_grad()
    def reset(self, k: int) -> None:
        """Forget image k's moments and steps: a new image takes its place."""
        for buf in (self._m, self._v, self._t):
            buf[k] = 0

    @torch.no_grad()
    def select(self, rows: torch.Tensor, x: torch.Tensor) -> "BatchedAdam":
        """The state of images `rows` only, now driving `x` (see BatchedLBFGS.select)."""
        out = BatchedAdam(x, self.lr, self.clamp, self.betas, self.eps)
        for name in ("_m", "_v", "_t"):
            getattr(out, name).copy_(getattr(self, name)[rows])
        return out

    @torch.no_grad()
    def step(self, loss: torch.Tensor | None = None) -> None:
        b1, b2 = self.betas
        g = self.x.grad.float()
        self._t.add_(1)
        self._m.lerp_(g, 1 - b1)
        self._v.mul_(b2).addcmul_(g, g, value=1 - b2)
        # In place on the device, so a CUDA graph replays it with each image's own count.
        denom = (self._v.sqrt() / (1 - b2 ** self._t).sqrt()).add_(self.eps)
        self.x.sub_(self._m / denom * (self.lr / (1 - b1 ** self._t)))
        if self.clamp is not None:
            self.x.clamp_(*self.clamp)


def make_optimizer(name: str, x: torch.Tensor, lr: float | None, history: int,
                   history_dtype: torch.dtype = torch.float32):
    if name == "lbfgs":
        return BatchedLBFGS(x, history=history, lr=1.0 if lr is None else lr, dtype=history_dtype)
    if name == "adam":
        return BatchedAdam(x, lr=0.02 if lr is None else lr)
    raise ValueError(f"optimizer must be lbfgs or adam, not {name!r}")
