"""How much memory a batch needs, counted from VGG19's layer shapes, and the FLOPs it costs."""

from __future__ import annotations

from nstd.engine.vgg import LAYER_INDEX, VGG19_CFG


def _layer_shapes(h: int, w: int, last: int):
    """(kind, channels_in, channels_out, out_h, out_w) for each layer up to index `last`."""
    out, c, idx = [], 3, 0
    for item in VGG19_CFG:
        if item == "M":
            h, w = h // 2, w // 2
            out.append(("pool", c, c, h, w))
            idx += 1
        else:
            out.append(("conv", c, item, h, w))
            out.append(("relu", item, item, h, w))
            c = item
            idx += 2
        if idx > last:
            break
    return out[: last + 1]


def activation_elements(h: int, w: int, layers: frozenset[str]) -> int:
    """Elements kept for the backward pass of one image (in-place ReLUs share storage)."""
    last = max(LAYER_INDEX[n] for n in layers)
    total = 3 * h * w
    for kind, _, cout, oh, ow in _layer_shapes(h, w, last):
        if kind == "conv":
            total += cout * oh * ow
        elif kind == "pool":
            total += 3 * cout * oh * ow  # output, plus max-pool's int64 indices
    return total


def bytes_per_image(h: int, w: int, layers: frozenset[str], optimizer: str, lbfgs_history: int) -> int:
    """A conservative fp32 estimate: activations twice (forward kept, backward transient),
    the optimiser's state, and the image, its gradient and targets."""
    pixels = 3 * h * w
    act = activation_elements(h, w, layers) * 4 * 2
    state = (2 * lbfgs_history + 4) * pixels * 4 if optimizer == "lbfgs" else 4 * pixels * 4
    return int(act + state + 8 * pixels * 4)


def auto_batch(free_bytes: int, h: int, w: int, layers: frozenset[str], optimizer: str,
               lbfgs_history: int, budget: float = 0.8, cap: int = 64,
               measured: MeasuredMemory | None = None, key: tuple = ()) -> int:
    """Images of this size that fit in `budget` of the free memory: by the peak measured on
    earlier batches of the same kind when there is one, else by the layer-shape estimate."""
    per = measured.bytes_per_image(key, h, w) if measured is not None else None
    if per is None:
        per = bytes_per_image(h, w, layers, optimizer, lbfgs_history)
    return max(1, min(cap, int(free_bytes * budget // per)))


class MeasuredMemory:
    """Peak device memory per pixel, learned from finished batches, per kind of batch.

    Memory grows linearly with pixels (4.3 KB per pixel from 256 to 1024 px on an H100,
    benchmarks/RESULTS.md), so one batch of a kind sizes the next at any size. The
    largest figure seen is kept, with a margin for allocator and workspace variation.
    """

    MARGIN = 1.15

    def __init__(self):
        self._per_pixel: dict[tuple, float] = {}

    def record(self, key: tuple, peak_bytes: int, batch: int, h: int, w: int) -> None:
        per_pixel = peak_bytes / (batch * h * w)
        self._per_pixel[key] = max(self._per_pixel.get(key, 0.0), per_pixel)

    def bytes_per_image(self, key: tuple, h: int, w: int) -> int | None:
        if key not in self._per_pixel:
            return None
        return int(self._per_pixel[key] * h * w * self.MARGIN)


def flops_per_iteration(h: int, w: int, layers: frozenset[str]) -> int:
    """Multiply-adds x2 of the convolutions, forward plus the backward pass to the input."""
    last = max(LAYER_INDEX[n] for n in layers)
    fwd = 0
    for kind, cin, cout, oh, ow in _layer_shapes(h, w, last):
        if kind == "conv":
            fwd += 2 * 9 * cin * cout * oh * ow
    # The backward pass to the input costs one more convolution per layer (no weight grads).
    return 2 * fwd
