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
               lbfgs_history: int, budget: float = 0.8, cap: int = 64) -> int:
    per = bytes_per_image(h, w, layers, optimizer, lbfgs_history)
    return max(1, min(cap, int(free_bytes * budget // per)))


def flops_per_iteration(h: int, w: int, layers: frozenset[str]) -> int:
    """Multiply-adds x2 of the convolutions, forward plus the backward pass to the input."""
    last = max(LAYER_INDEX[n] for n in layers)
    fwd = 0
    for kind, cin, cout, oh, ow in _layer_shapes(h, w, last):
        if kind == "conv":
            fwd += 2 * 9 * cin * cout * oh * ow
    # The backward pass to the input costs one more convolution per layer (no weight grads).
    return 2 * fwd
