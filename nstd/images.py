"""Decoding photos as a photographer expects, and encoding results tagged as sRGB.

torch is imported by the functions that make or read tensors, not with the module: the
commands that only read a config (status, retry, check's folders) load no PyTorch.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Callable

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from nstd.errors import ImageError

if TYPE_CHECKING:
    import torch

# Pillow's settings are module globals that every caller in the process shares, so nstd
# sets none of them. Its pixel limit is nstd's own, per decode (`max_pixels`: see
# _open_image). A half-written file must fail, never decode grey-padded: Pillow reads
# ImageFile.LOAD_TRUNCATED_IMAGES at load time and has no per-call switch for it, and its
# default, off, is the behaviour nstd needs, so nstd relies on the default rather than
# set it for everyone (test_images pins both).

DEFAULT_MAX_PIXELS = 50_000_000
FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "tiff": "TIFF", "tif": "TIFF"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
SRGB_ICC = _SRGB.tobytes()


@dataclass(frozen=True)
class Decoded:
    """A decoded photo: RGB float pixels in [0, 1], (3, H, W), and what came with it."""

    pixels: torch.Tensor
    bits: int  # 8 or 16 per channel in the source
    exif: bytes | None


def decode(data_or_path: bytes | str | Path, name: str | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode fully, or raise ImageError naming the file."""
    label = name or str(data_or_path) if not isinstance(data_or_path, bytes) else (name or "<bytes>")
    is_bytes = isinstance(data_or_path, bytes)
    try:
        with (
            io.BytesIO(data_or_path) if is_bytes else open(data_or_path, "rb") as fp,
            _open_image(fp, "" if is_bytes else os.fspath(data_or_path)) as im,
        ):
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{label}: {w}x{h} is {w * h:,} pixels, over the limit of "
                                 f"{max_pixels:,} (max_pixels)")
            read16 = _16bit_colour_reader(im, data_or_path)
            if read16 is not None:
                # Read the tags before Pillow loads it: its loader turns the pixels
                # upright and drops the orientation tag on the way.
                tags = im.getexif()
                icc = im.info.get("icc_profile")
                try:
                    arr = read16(data_or_path)
                except Exception as e:  # noqa: BLE001 - the codecs raise many types for a bad file
                    raise ImageError(f"{label}: cannot decode ({_short(e)})") from None
                if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
                    raise ImageError(f"{label}: cannot decode (unexpected 16-bit layout {arr.dtype} {arr.shape})")
                pixels = _from_16bit(_icc_16bit_to_srgb(arr, icc) if icc else arr, tags.get(ORIENTATION, 1))
                return Decoded(pixels, 16, tags.tobytes() if tags else None)
            im.seek(0)  # the first frame of an animation
            im.load()
            exif = im.info.get("exif")
            icc = im.info.get("icc_profile")
            im = ImageOps.exif_transpose(im)
            pixels, bits = _to_rgb(im, icc, label)
    except ImageError:
        raise
    except UnidentifiedImageError:
        size = len(data_or_path) if isinstance(data_or_path, bytes) else None
        why = "an empty file" if size == 0 else "not a recognised image format"
        raise ImageError(f"{label}: not a usable image ({why})") from None
    # DecompressionBombError: a GIF frame reaching past its screen is still checked by
    # Pillow, against its own limit, while it is opened.
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombError) as e:
        raise ImageError(f"{label}: cannot decode ({_short(e)})") from None
    return Decoded(pixels, bits, exif)


def _open_image(fp: IO[bytes], filename: str) -> ImageFile.ImageFile:
    """Image.open, lazily as it does, less its check of the header against Pillow's
    MAX_IMAGE_PIXELS.

    That limit is a module global with no per-call switch. Left as it is, Pillow refuses
    a header over twice it before decode can, in Pillow's words rather than nstd's one
    line, and refuses a photo that a config's larger max_pixels allows; changed, it
    changes for every use of Pillow in the process. So decode checks the header against
    its own max_pixels, and this tries Pillow's registered formats in Image.open's order
    (the common ones, then every plugin) without the global check."""
    prefix = fp.read(16)
    tried: set[str] = set()
    for register in (Image.preinit, Image.init):
        register()
        for fmt in [f for f in Image.ID if f not in tried]:
            tried.add(fmt)
            factory, accept = Image.OPEN[fmt]
            try:  # a format's test of the prefix can fail on a short file, as its parser can
                fits = accept(prefix) if accept else True
                if fits and not isinstance(fits, str):  # a str is Pillow's "close, but not this one"
                    fp.seek(0)
                    return factory(fp, filename)
            except (SyntaxError, IndexError, TypeError, struct.error):
                pass  # not this format after all; Image.open moves on in the same way
    raise UnidentifiedImageError(f"cannot identify image file {filename or fp!r}")


def _16bit_colour_reader(im: Image.Image, src) -> Callable[[bytes | str | Path], np.ndarray] | None:
    """How to read a 16-bit colour TIFF or PNG at full precision, or None for anything
    else: Pillow has no 16-bit colour mode and would reduce it to 8 bits."""
    if im.format == "TIFF":
        bits = im.tag_v2.get(258, (8,))
        bits = bits if isinstance(bits, tuple) else (bits,)
        return _read_16bit_tiff if bits[0] == 16 and im.tag_v2.get(277, 1) in (3, 4) else None
    if im.format == "PNG":
        if isinstance(src, bytes):
            head = src[:26]
        else:
            with open(src, "rb") as f:
                head = f.read(26)
        # IHDR is always the first chunk: bit depth at byte 24, colour type (2 RGB, 6 RGBA) at 25.
        return _read_16bit_png if len(head) == 26 and head[24] == 16 and head[25] in (2, 6) else None
    return None


def _read_16bit_tiff(src) -> np.ndarray:
    import tifffile  # with imagecodecs for LZW, Photoshop's default compression

    return tifffile.imread(io.BytesIO(src) if isinstance(src, bytes) else src, key=0)


def _read_16bit_png(src) -> np.ndarray:
    import imagecodecs

    return imagecodecs.png_decode(src if isinstance(src, bytes) else Path(src).read_bytes())


# (flip left-right, flip top-bottom, transpose) for each EXIF orientation.
_ORIENT = {1: (False, False, False), 2: (True, False, False), 3: (True, True, False), 4: (False, True, False),
           5: (False, False, True), 6: (True, False, True), 7: (True, True, True), 8: (False, True, True)}


def _icc_16bit_to_srgb(arr: np.ndarray, icc: bytes) -> np.ndarray:
    """The colour channels moved from the embedded profile (ProPhoto or Adobe RGB, as
    raw converters export 16 bits) into sRGB, at 16 bits, by LittleCMS."""
    import imagecodecs

    try:
        rgb = imagecodecs.cms_transform(np.ascontiguousarray(arr[..., :3]), icc, SRGB_ICC,
                                        colorspace="rgb", outcolorspace="rgb", outdtype=np.uint16)
    except Exception:  # noqa: BLE001 - as for 8 bits, a broken profile leaves good pixels
        return arr
    return np.concatenate([rgb, arr[..., 3:]], axis=2) if arr.shape[2] == 4 else rgb


def _from_16bit(arr: np.ndarray, orientation: int) -> torch.Tensor:
    """(H, W, 3 or 4) uint16 to upright RGB in [0, 1]."""
    import torch

    arr = arr.astype(np.float32) / 65535.0
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)
    if x.shape[0] == 4:  # transparency onto white, as on paper
        x = x[:3] * x[3:] + (1 - x[3:])
    flip_lr, flip_tb, transpose = _ORIENT.get(orientation, _ORIENT[1])
    if transpose:
        x = x.transpose(1, 2)
    if flip_lr:
        x = x.flip(2)
    if flip_tb:
        x = x.flip(1)
    return x.contiguous()


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _to_rgb(im: Image.Image, icc: bytes | None, label: str) -> tuple[torch.Tensor, int]:
    import torch

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float32)
        scale = 65535.0 if im.mode != "I" or arr.max(initial=0) > 255 else 255.0
        gray = torch.from_numpy(np.clip(arr / scale, 0, 1))
        return gray.expand(3, *gray.shape).contiguous(), 16
    if im.mode == "F":
        gray = torch.from_numpy(np.clip(np.asarray(im, dtype=np.float32), 0, 1))
        return gray.expand(3, *gray.shape).contiguous(), 16
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode == "P" and "transparency" in im.info):
        # Transparency goes onto white, as on paper.
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba).convert("RGB")
    elif icc is not None and im.mode in ("RGB", "CMYK", "L"):
        im = _icc_to_srgb(im, icc, label)
    if im.mode != "RGB":
        im = im.convert("RGB")
    arr = np.asarray(im, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0), 8


def _icc_to_srgb(im: Image.Image, icc: bytes, label: str) -> Image.Image:
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        # A broken embedded profile is common in the wild; the pixels are still good.
        return im.convert("RGB")


def to_pil(pixels: torch.Tensor) -> Image.Image:
    arr = (pixels.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy())
    return Image.fromarray(arr, "RGB")


def output_format(name: str) -> str:
    fmt = FORMATS.get(name.lower().lstrip("."))
    if fmt is None:
        raise ValueError(f"output format must be jpeg, png or tiff, not {name!r}")
    return fmt


ORIENTATION, IMAGE_DESCRIPTION, SOFTWARE = 0x0112, 0x010E, 0x0131
# Width, length, bits, compression, photometric, strips, samples, planar config,
# predictor, extra samples, sample format, tiles, the ICC profile and XMP.
_TIFF_LAYOUT_TAGS = (256, 257, 258, 259, 262, 273, 277, 278, 279, 284, 317, 338, 339,
                     322, 323, 324, 325, 34675, 700)
_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825


def output_exif(source: bytes | None, software: str, description: str) -> bytes:
    """The photo's EXIF for a stylized copy: capture date, camera, copyright and the rest
    kept; orientation dropped (the pixels are already upright) and the thumbnail (IFD1,
    which would show the unstyled photo) not carried; Software and ImageDescription set."""
    exif = Image.Exif()
    if source:
        try:
            exif.load(source)
            # Sub-IFDs load lazily; reading them makes tobytes() write them back.
            for tag in (_EXIF_IFD, _GPS_IFD):
                if tag in exif:
                    exif.get_ifd(tag)
        except Exception:  # noqa: BLE001 - damaged EXIF is common; the output just gets fresh tags
            exif = Image.Exif()
    exif.pop(ORIENTATION, None)
    for tag in _TIFF_LAYOUT_TAGS:  # a TIFF source's own layout, meaningless for the output
        exif.pop(tag, None)
    exif[SOFTWARE] = software
    exif[IMAGE_DESCRIPTION] = description
    return exif.tobytes()


def encode(pixels: torch.Tensor, fmt: str = "JPEG", quality: int = 92, exif: bytes | None = None,
           bits: int = 8) -> bytes:
    """Encode an RGB float image, tagged with the sRGB profile. TIFF keeps 16 bits when asked."""
    if fmt == "TIFF" and bits == 16:
        return _encode_16bit_tiff(pixels, exif)
    im = to_pil(pixels)
    buf = io.BytesIO()
    kwargs: dict = {"icc_profile": SRGB_ICC}
    if exif:
        kwargs["exif"] = exif
    if fmt == "JPEG":
        kwargs.update(quality=quality, subsampling=0 if quality >= 90 else 2, optimize=True)
    # TIFF stays uncompressed: Pillow compresses TIFF through libtiff, which cannot write
    # the EXIF sub-IFD that holds the capture date.
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


# IFD0 tags a 16-bit TIFF carries over from the EXIF (tifffile writes no EXIF sub-IFD, so
# the capture date goes into IFD0 under its own tag number, where exiftool reads it).
_TIFF_TEXT_TAGS = (0x010F, 0x0110, 0x0132, 0x013B, 0x8298)  # Software and the description: below
_DATE_TIME_ORIGINAL = 0x9003


def _encode_16bit_tiff(pixels: torch.Tensor, exif: bytes | None) -> bytes:
    import tifffile
    import torch

    arr = pixels.detach().clamp(0, 1).mul(65535).round().to(torch.int32).permute(1, 2, 0).cpu().numpy()
    tags = [(34675, "B", len(SRGB_ICC), SRGB_ICC, True)]  # the sRGB ICC profile
    software, description = None, None
    if exif:
        source = Image.Exif()
        source.load(exif)
        for tag in _TIFF_TEXT_TAGS:
            if isinstance(source.get(tag), str):
                tags.append((tag, "s", 0, source[tag], True))
        software, description = source.get(SOFTWARE), source.get(IMAGE_DESCRIPTION)
        original = source.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL)
        if isinstance(original, str):
            tags.append((_DATE_TIME_ORIGINAL, "s", 0, original, True))
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr.astype(np.uint16), photometric="rgb", compression="zlib", extratags=tags,
                     metadata=None, software=software or False, description=description)
    return buf.getvalue()
