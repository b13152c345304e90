import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from nstd import images
from nstd.errors import ImageError


def save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient_rgb(w=40, h=30) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    arr = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], 2)
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def test_exif_orientation_is_applied():
    im = gradient_rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    dec = images.decode(save(im, "JPEG", exif=exif.tobytes(), quality=95), "rot.jpg")
    assert dec.pixels.shape == (3, 40, 30)  # portrait now
    # The left column of the stored image becomes the top row once displayed.
    top = dec.pixels[0, 0, :]
    assert top.max() - top.min() < 0.1  # red ramp runs along x: constant along the old left edge


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "CMYK", "1", "I;16", "RGB"])
def test_every_mode_becomes_rgb(mode):
    base = gradient_rgb()
    if mode == "I;16":
        arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257)
        im = Image.fromarray(arr)  # uint16 -> I;16
        data = save(im, "PNG")
    elif mode == "CMYK":
        data = save(base.convert("CMYK"), "JPEG", quality=95)
    else:
        data = save(base.convert(mode), "PNG" if mode != "CMYK" else "TIFF")
    dec = images.decode(data, f"x.{mode}")
    assert dec.pixels.shape == (3, 30, 40) and dec.pixels.dtype == torch.float32
    assert 0 <= dec.pixels.min() and dec.pixels.max() <= 1
    assert dec.bits == (16 if mode == "I;16" else 8)
    if mode == "I;16":
        assert torch.allclose(dec.pixels[0], torch.from_numpy(np.asarray(base.convert("L")) / 255.0).float(),
                              atol=1e-3)


def test_transparency_goes_onto_white():
    im = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    dec = images.decode(save(im, "PNG"), "clear.png")
    assert torch.allclose(dec.pixels, torch.ones(3, 8, 8))


def test_sixteen_bit_keeps_precision():
    arr = np.full((4, 4), 1000, dtype=np.uint16)  # 1000/65535: between two 8-bit levels
    dec = images.decode(save(Image.fromarray(arr), "PNG"), "deep.png")
    assert dec.pixels[0, 0, 0].item() == pytest.approx(1000 / 65535, abs=1e-6)


def linear_rgb_icc() -> bytes:
    """A minimal ICC v2 matrix/TRC profile: sRGB primaries with a linear (gamma 1) curve."""
    def s15(v):
        return struct.pack(">i", round(v * 65536))

    def xyz(x, y, z):
        return b"XYZ " + bytes(4) + s15(x) + s15(y) + s15(z)

    text = b"linear sRGB\0"
    # ICC v2 'desc': ASCII length and text, then empty Unicode and ScriptCode parts.
    desc = b"desc" + bytes(4) + struct.pack(">I", len(text)) + text + bytes(4) + bytes(4) + bytes(2) + bytes(1)
    desc += bytes(67)
    curv = b"curv" + bytes(4) + struct.pack(">IH", 1, 0x0100) + bytes(2)
    tags = [(b"desc", desc), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            (b"rXYZ", xyz(0.4361, 0.2225, 0.0139)), (b"gXYZ", xyz(0.3851, 0.7169, 0.0971)),
            (b"bXYZ", xyz(0.1431, 0.0606, 0.7141)),
            (b"rTRC", curv), (b"gTRC", curv), (b"bTRC", curv)]
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + bytes(4) + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + bytes(12) + b"acsp" + bytes(24) + struct.pack(">I", 0) + s15(0.9642) + s15(1.0)
              + s15(0.8249) + bytes(48))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def test_embedded_icc_profile_is_converted_to_srgb():
    im = gradient_rgb()
    icc = linear_rgb_icc()
    tagged = images.decode(save(im, "PNG", icc_profile=icc), "linear.png")
    plain = images.decode(save(im, "PNG"), "plain.png")
    linear = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    expected = ImageCms.profileToProfile(im, linear, ImageCms.createProfile("sRGB"), outputMode="RGB")
    want = torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1).float() / 255
    assert torch.allclose(tagged.pixels, want, atol=1 / 255)
    assert not torch.allclose(tagged.pixels, plain.pixels, atol=0.05)


def test_outputs_are_tagged_srgb_in_every_format():
    px = torch.rand(3, 10, 12)
    for fmt in ("JPEG", "PNG", "TIFF"):
        with Image.open(io.BytesIO(images.encode(px, fmt))) as im:
            assert im.format == fmt and im.size == (12, 10)
            assert im.info.get("icc_profile") == images.SRGB_ICC
    png = images.decode(images.encode(px, "PNG"), "x.png").pixels
    assert torch.allclose(png, px, atol=0.5 / 255 + 1e-6)


def test_jpeg_quality_is_settable():
    px = torch.rand(3, 64, 64)
    assert len(images.encode(px, "JPEG", quality=50)) < len(images.encode(px, "JPEG", quality=95))


@pytest.mark.parametrize("data,why", [
    (b"", "not a usable image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot decode|not a usable"),
    (bytes(range(256)) * 8, "not a usable image"),
])
def test_bad_bytes_give_a_clear_error_naming_the_file(data, why):
    with pytest.raises(ImageError, match=f"^photo.jpg: ({why})"):
        images.decode(data, "photo.jpg")


def test_truncated_jpeg_is_an_error_not_a_grey_image():
    data = save(gradient_rgb(200, 150), "JPEG", quality=95)
    with pytest.raises(ImageError, match="^half.jpg: cannot decode"):
        images.decode(data[: len(data) // 2], "half.jpg")


def test_decompression_bomb_is_refused_before_decoding():
    data = save(Image.new("L", (3000, 3000)), "PNG")  # 9 Mpx in a few KB
    with pytest.raises(ImageError, match="bomb.png: 3000x3000 is 9,000,000 pixels, over the limit"):
        images.decode(data, "bomb.png", max_pixels=1_000_000)


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    dec = images.decode(buf.getvalue(), "anim.gif")
    assert dec.pixels[0].mean() > 0.9 and dec.pixels[2].mean() < 0.1


def test_linear_light_mid_grey_brightens_in_srgb():
    grey = Image.new("RGB", (4, 4), (64, 64, 64))  # 0.25 linear is about 0.54 in sRGB
    dec = images.decode(save(grey, "PNG", icc_profile=linear_rgb_icc()), "grey.png")
    assert dec.pixels.mean().item() == pytest.approx(0.54, abs=0.03)


def test_a_header_claiming_giant_dimensions_is_refused_by_nstds_own_limit():
    from harness.corpus import png_bomb
    with pytest.raises(ImageError, match=r"bomb.png: 40000x40000 is 1,600,000,000 pixels, over the limit "
                                         r"of 50,000,000 \(max_pixels\)"):
        images.decode(png_bomb(40000, 40000), "bomb.png")


# Run before anything else in a fresh interpreter: what Pillow's modules hold before and
# after nstd.images is imported, every setting a module keeps as a plain value.
PILLOW_SETTINGS = """
import json, sys
from PIL import Image, ImageCms, ImageFile, ImageOps
Image.init()  # every plugin loaded, so that their settings are compared too


def settings():
    return {f"{name}.{key}": repr(value) for name, module in sorted(sys.modules.items())
            if name.startswith("PIL.") and module is not None
            for key, value in vars(module).items()
            if not key.startswith("__") and isinstance(value, (bool, int, float, str, type(None)))}


before = settings()
import nstd.images  # noqa: E402
after = settings()
print(json.dumps({"changed": {k: [v, after[k]] for k, v in before.items() if after.get(k) != v},
                  "max_image_pixels": Image.MAX_IMAGE_PIXELS, "load_truncated": ImageFile.LOAD_TRUNCATED_IMAGES}))
"""


def test_importing_nstd_images_leaves_pillows_settings_as_they_were():
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", PILLOW_SETTINGS], capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout)
    assert seen["changed"] == {}
    assert seen["max_image_pixels"] == 1024 * 1024 * 1024 // 4 // 3 and seen["load_truncated"] is False


@pytest.mark.parametrize("pillows_limit", [None, 100])
def test_each_decode_answers_to_its_own_max_pixels_whatever_pillows_limit(monkeypatch, pillows_limit):
    """Another part of the process may set Pillow's limit either way: it decides nothing
    for nstd, and nstd's refusal stays its own one line."""
    import warnings

    from harness.corpus import png_bomb

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pillows_limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not even Pillow's DecompressionBombWarning
        assert images.decode(save(gradient_rgb(40, 30), "PNG"), "small.png", max_pixels=1200).pixels.shape == (3, 30, 40)
        with pytest.raises(ImageError, match=r"^small.png: 40x30 is 1,200 pixels, over the limit of 1,199 "
                                             r"\(max_pixels\)$"):
            images.decode(save(gradient_rgb(40, 30), "PNG"), "small.png", max_pixels=1199)
        with pytest.raises(ImageError, match=r"^bomb.png: 40000x40000 is 1,600,000,000 pixels, over the limit "
                                             r"of 50,000,000 \(max_pixels\)$"):
            images.decode(png_bomb(40000, 40000), "bomb.png")


def _photo_with_exif(h=40, w=60):
    im = Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype("uint8"))
    ex = Image.Exif()
    ex[images.ORIENTATION] = 6  # rotate 90° on display
    ex[0x010F], ex[0x0110], ex[0x8298] = "Canon", "EOS R5", "(c) Ann Example"
    ex.get_ifd(0x8769)[0x9003] = "2024:05:01 10:11:12"  # DateTimeOriginal
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=ex.tobytes())
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_exif_round_trip_keeps_capture_data_and_drops_orientation(fmt):
    decoded = images.decode(_photo_with_exif())
    assert decoded.pixels.shape == (3, 60, 40)  # already turned upright
    exif = images.output_exif(decoded.exif, "nstd 9.9", "Stylized after starry by nstd 9.9")
    back = Image.open(io.BytesIO(images.encode(decoded.pixels, fmt, 90, exif)))
    tags = back.getexif()
    assert images.ORIENTATION not in tags
    assert (tags[0x010F], tags[0x0110], tags[0x8298]) == ("Canon", "EOS R5", "(c) Ann Example")
    assert tags.get_ifd(0x8769)[0x9003] == "2024:05:01 10:11:12"
    assert tags[images.SOFTWARE] == "nstd 9.9"
    assert tags[images.IMAGE_DESCRIPTION] == "Stylized after starry by nstd 9.9"
    assert back.info.get("icc_profile") == images.SRGB_ICC
    # Decoding the output again must not rotate it a second time.
    assert images.decode(images.encode(decoded.pixels, fmt, 90, exif)).pixels.shape == (3, 60, 40)


def test_damaged_or_missing_exif_still_gets_the_nstd_fields():
    for source in (None, b"Exif\x00\x00garbage"):
        tags = Image.Exif()
        tags.load(images.output_exif(source, "nstd", "desc"))
        assert tags[images.SOFTWARE] == "nstd" and images.ORIENTATION not in tags


def _tiff16(arr, **kw):
    import tifffile
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, photometric="rgb", **kw)
    return buf.getvalue()


def test_a_16bit_tiff_keeps_its_precision_in_and_out():
    import tifffile
    arr = (np.random.default_rng(1).random((30, 40, 3)) * 65535).astype(np.uint16)
    decoded = images.decode(_tiff16(arr))
    assert decoded.bits == 16
    # Values between 8-bit steps survive: the decode is not through an 8-bit mode.
    assert np.abs(decoded.pixels.permute(1, 2, 0).numpy() * 65535 - arr).max() < 0.5
    exif = images.output_exif(None, "nstd 9.9", "Stylized after ink by nstd 9.9")
    out = images.encode(decoded.pixels, "TIFF", 90, exif, bits=16)
    with tifffile.TiffFile(io.BytesIO(out)) as tif:
        page = tif.pages[0]
        assert page.dtype == np.uint16 and page.shape == (30, 40, 3)
        assert np.array_equal(page.asarray(), arr)
        assert page.tags["Software"].value == "nstd 9.9"
        assert page.tags[34675].value == images.SRGB_ICC
    # JPEG and PNG stay 8-bit whatever the source.
    assert Image.open(io.BytesIO(images.encode(decoded.pixels, "PNG", 90, exif, bits=16))).mode == "RGB"


def test_a_16bit_tiff_is_turned_upright_and_its_capture_date_kept():
    import tifffile
    arr = (np.random.default_rng(2).random((20, 50, 3)) * 65535).astype(np.uint16)
    ex = Image.Exif()
    ex[images.ORIENTATION] = 6
    data = _tiff16(arr, extratags=[(images.ORIENTATION, "H", 1, 6, True)])
    decoded = images.decode(data)
    assert decoded.pixels.shape == (3, 50, 20)
    src = Image.Exif()
    src.get_ifd(0x8769)[0x9003] = "2022:02:02 02:02:02"
    src[0x010F] = "Hasselblad"
    exif = images.output_exif(src.tobytes(), "nstd", "d")
    with tifffile.TiffFile(io.BytesIO(images.encode(decoded.pixels, "TIFF", 90, exif, bits=16))) as tif:
        tags = tif.pages[0].tags
        assert tags["Make"].value == "Hasselblad"
        assert tags[0x9003].value == "2022:02:02 02:02:02"
        assert "Orientation" not in tags


def test_a_truncated_16bit_tiff_is_one_clear_error():
    arr = (np.random.default_rng(4).random((64, 64, 3)) * 65535).astype(np.uint16)
    data = _tiff16(arr)
    with pytest.raises(ImageError, match=r"^deep.tif: cannot decode"):
        images.decode(data[: len(data) // 2], "deep.tif")


def test_an_lzw_compressed_16bit_tiff_as_photoshop_saves_it():
    arr = (np.random.default_rng(5).random((24, 36, 3)) * 65535).astype(np.uint16)
    decoded = images.decode(_tiff16(arr, compression="lzw", predictor=2), "ps.tif")
    assert decoded.bits == 16
    assert np.abs(decoded.pixels.permute(1, 2, 0).numpy() * 65535 - arr).max() < 0.5


@pytest.mark.parametrize("channels", [3, 4])
def test_a_16bit_png_keeps_its_precision(tmp_path, channels):
    import imagecodecs
    arr = (np.random.default_rng(6).random((20, 30, channels)) * 65535).astype(np.uint16)
    if channels == 4:
        arr[..., 3] = 65535  # opaque: the colours must come through unchanged
    data = imagecodecs.png_encode(arr)
    for src in (data, _write(tmp_path / "deep.png", data)):
        decoded = images.decode(src, "deep.png")
        assert decoded.bits == 16 and decoded.pixels.shape == (3, 20, 30)
        assert np.abs(decoded.pixels.permute(1, 2, 0).numpy() * 65535 - arr[..., :3]).max() < 0.5
    out = images.encode(decoded.pixels, "TIFF", 90, images.output_exif(None, "nstd", "d"), bits=16)
    import tifffile
    assert np.array_equal(tifffile.imread(io.BytesIO(out)), arr[..., :3])


def test_an_8bit_png_still_goes_through_pillow():
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), (10, 200, 30)).save(buf, "PNG")
    decoded = images.decode(buf.getvalue())
    assert decoded.bits == 8 and decoded.pixels.shape == (3, 6, 8)


def test_a_truncated_16bit_png_is_one_clear_error():
    import imagecodecs
    data = imagecodecs.png_encode((np.random.default_rng(7).random((64, 64, 3)) * 65535).astype(np.uint16))
    with pytest.raises(ImageError, match=r"^deep.png: cannot decode"):
        images.decode(data[: len(data) // 2], "deep.png")


def _write(path, data):
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("kind", ["tiff", "png"])
def test_a_16bit_photo_in_another_colour_space_is_converted_to_srgb(kind):
    import imagecodecs
    # A grey ramp stored linearly (gamma 1) under a linear-sRGB profile must decode to the
    # sRGB-encoded values of the same light.
    ramp = np.linspace(0.02, 0.98, 40)
    linear = np.round(np.repeat(ramp[None, :, None], 10, 0).repeat(3, 2) * 65535).astype(np.uint16)
    icc = linear_rgb_icc()
    data = _tiff16(linear, iccprofile=icc) if kind == "tiff" else _with_iccp(imagecodecs.png_encode(linear), icc)
    decoded = images.decode(data, f"linear.{kind}")
    assert decoded.bits == 16
    srgb = np.where(ramp <= 0.0031308, 12.92 * ramp, 1.055 * ramp ** (1 / 2.4) - 0.055)
    assert np.abs(decoded.pixels[0, 5].numpy() - srgb).max() < 0.01
    # A broken profile leaves the pixels as stored, as for 8 bits.
    broken = images.decode(_tiff16(linear, iccprofile=b"not a profile" * 20), "broken.tif")
    assert np.abs(broken.pixels[0, 5].numpy() - linear[5, :, 0] / 65535).max() < 1e-6


def _with_iccp(png: bytes, icc: bytes) -> bytes:
    """The PNG with an iCCP chunk after its IHDR (8-byte signature + 25-byte IHDR)."""
    import zlib
    body = b"iCCP" + b"test\0\0" + zlib.compress(icc)
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:33] + chunk + png[33:]
