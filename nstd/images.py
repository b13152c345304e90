"""Decoding photos as a photographer expects, and encoding results tagged as sRGB."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from nstd.errors import ImageError

# A half-written file must fail to decode, never decode as a grey-padded image.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# nstd checks the header's dimensions against its own, configurable `max_pixels` before
# decoding anything; Pillow's fixed limit would pre-empt it with a different number.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 50_000_000
FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "tiff": "TIFF", "tif": "TIFF"}
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "TIFF": "tif"}
_SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
SRGB_ICC = _SRGB.tobytes()


@dataclass(frozen=True)
class Decoded:
    """A decoded photo: RGB float pixels in [0, 1], (3, H, W), and what came with it."""

    pixels: torch.Tensor
    format: str | None
    bits: int  # 8 or 16 per channel in the source
    exif: bytes | None
    had_icc: bool


def decode(data_or_path: bytes | str | Path, name: str | None = None,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Decode fully, or raise ImageError naming the file."""
    label = name or str(data_or_path) if not isinstance(data_or_path, bytes) else (name or "<bytes>")
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    try:
        with Image.open(src) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ImageError(f"{label}: {w}x{h} is {w * h:,} pixels, over the limit of "
                                 f"{max_pixels:,} (max_pixels)")
            fmt = im.format
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
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
        raise ImageError(f"{label}: cannot decode ({_short(e)})") from None
    return Decoded(pixels, fmt, bits, exif, icc is not None)


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def _to_rgb(im: Image.Image, icc: bytes | None, label: str) -> tuple[torch.Tensor, int]:
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
    exif[SOFTWARE] = software
    exif[IMAGE_DESCRIPTION] = description
    return exif.tobytes()


def encode(pixels: torch.Tensor, fmt: str = "JPEG", quality: int = 92, exif: bytes | None = None) -> bytes:
    """Encode an RGB float image, tagged with the sRGB profile."""
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
