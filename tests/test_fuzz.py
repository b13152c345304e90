"""Random sidecars and random mask bytes through the readers a dropped file reaches: each
gives an accepted value or a one-line refusal naming the file, never another exception.

A hang or an unbounded allocation would stop the test itself; the generators favour
what made them before (aliases, deep nesting, long values, damaged PNGs)."""

import io
import string

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from nstd.daemon import companions, sidecar
from nstd.errors import ConfigError, ImageError
from nstd.guide import GuideSpec, load
from nstd.params import FIELD_NAMES, TransferParams

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
KEYS = list(FIELD_NAMES) + list(sidecar.GUIDE_KEYS) + ["x", "<<"]


def _scalar():
    return st.one_of(st.integers(-10**30, 10**30).map(str), st.floats(allow_nan=True).map(str),
                     st.sampled_from(["true", "~", ".inf", "-.nan", "original", "keep", "ink", "'#ff0000'",
                                      "2024-13-45", "1" + "0" * 5000, "0x1F", "1:2:3", "!!binary aGk=",
                                      "!!python/object/apply:os.system ['true']", "*a", "&a x", "x.mask.png"]),
                     st.text(string.printable, max_size=30))


def _value(depth: int):
    if depth == 0:
        return _scalar()
    inner = _value(depth - 1)
    return st.one_of(_scalar(),
                     st.lists(inner, max_size=4).map(lambda xs: "[" + ", ".join(xs) + "]"),
                     st.lists(st.tuples(st.sampled_from(KEYS), inner), max_size=3)
                     .map(lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
                     st.integers(1, 40).map(lambda n: "[" * n + "]" * n))


def _document():
    line = st.tuples(st.sampled_from(KEYS), st.sampled_from(["", "&a ", "&b "]), _value(3))
    structured = st.lists(line, max_size=8).map(lambda ls: "".join(f"{k}: {a}{v}\n" for k, a, v in ls))
    return st.one_of(structured, st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1")))


def _one_line(e: Exception, name: str) -> None:
    text = str(e)
    assert "\n" not in text and len(text) < 600 and name in text, text


@FUZZ
@given(text=_document())
def test_a_random_sidecar_is_a_value_or_one_line(tmp_path_factory, text):
    inbox = tmp_path_factory.mktemp("inbox")
    (inbox / "p.jpg.nstd.yaml").write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        found = sidecar.overrides_for(inbox, "p.jpg")
        params = sidecar.apply(TransferParams(model="caffe"), found, {"caffe"})
        assert isinstance(params, TransferParams)
        companions.find(inbox, "p.jpg", found, ["ink"], lambda rel: None, lambda rel, key: b"")
    except ConfigError as e:
        _one_line(e, "p.jpg.nstd.yaml")


def _png(seed: int, h: int, w: int, colours: int) -> bytes:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (colours, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(palette[rng.integers(0, colours, (h, w))]).save(buf, "PNG")
    return buf.getvalue()


@FUZZ
@given(seed=st.integers(0, 2**16), cuts=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6),
       truncate=st.integers(0, 4000), kind=st.sampled_from(["mask", "regions"]))
def test_random_mask_bytes_are_a_guide_or_one_line(seed, cuts, truncate, kind):
    data = bytearray(_png(seed, 24, 32, 4))
    for at, byte in cuts:  # damaged in places, as a broken copy would be
        if at < len(data):
            data[at] = byte
    data = bytes(data[: max(truncate, 8)]) if truncate < len(data) else bytes(data)
    name = f"p.jpg.{kind}.png"
    colours = (("#ff0000", "ink"), ("#000000", "keep")) if kind == "regions" else ()
    try:
        guide = load(GuideSpec(kind, name, "0" * 64, colours), data, (24, 32), 10**6)
        assert all(p.mask.shape == (24, 32) for p in guide.parts)
    except (ImageError, ConfigError) as e:
        _one_line(e, name)
