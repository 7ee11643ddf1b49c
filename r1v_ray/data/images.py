"""Image decoding, defined once: every stage sees the same RGB pixels for the same stored bytes.

`PIL.Image.convert("RGB")` drops alpha (a diagram drawn in black on a transparent background
becomes one flat colour) and clips 16-bit values to 255 (a 16-bit gradient comes out nearly all
white). Here transparency is composited onto white, and 16-bit, 32-bit and float data are
rescaled to 8 bits. Images with more than `MAX_PIXELS` pixels are refused before their pixels are
decoded (a small file can declare a huge canvas).
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

# 8192 x 6144: above any photo or scan worth training on (the vision encoder sees at most 12 tiles of
# 448 px anyway); ~150 MB as RGB.
MAX_PIXELS = 50_000_000
# Formats the OpenAI chat API takes as they are; anything else is re-encoded as PNG.
API_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp"}


class ImageError(ValueError):
    """Why stored bytes cannot be used as an image."""


def check_size(img: Image.Image, max_pixels: int = MAX_PIXELS) -> None:
    width, height = img.size
    if width < 1 or height < 1:
        raise ImageError("image has no pixels")
    if width * height > max_pixels:
        raise ImageError(f"image too large: {width}x{height} = {width * height} pixels > {max_pixels}")


def _rescaled(img: Image.Image) -> Image.Image:
    """8-bit greyscale from 16-bit, 32-bit integer or float data."""
    a = np.asarray(img, dtype=np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if img.mode.startswith("I;16") or (img.mode == "I" and lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0  # the full 16-bit range onto 0..255
    elif img.mode == "F" and lo >= 0 and hi <= 1.0:
        a = a * 255.0  # float images in [0, 1]
    elif lo < 0 or hi > 255:
        a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)  # an unknown range: stretch it
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))  # 2-D uint8: mode L


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB pixels for a PIL image of any mode: alpha (or a transparent palette entry) over white."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        return _rescaled(img).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        with warnings.catch_warnings():  # PIL warns that palette transparency "should be RGBA": it is, here
            warnings.simplefilter("ignore")
            rgba = img.convert("RGBA")
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def decode_rgb(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Encoded bytes -> RGB image; ImageError with the reason for bytes that are not a usable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            check_size(img, max_pixels)  # from the header, before the pixels are decoded
            img.load()  # decodes the pixels, catching truncated files that verify() passes
            return to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image too large: {exc}") from None
    except Exception as exc:
        raise ImageError(f"undecodable image: {type(exc).__name__}: {exc}") from None


def api_image(data: bytes) -> tuple[str, bytes]:
    """(MIME type, bytes) to send an image to an API: the image as stored with its real type when it is a
    plain RGB or greyscale PNG/JPEG/GIF/WebP, else our RGB decoding re-encoded as PNG (so alpha, 16-bit and
    CMYK images look to a judge as they look to the model)."""
    with Image.open(io.BytesIO(data)) as img:
        mime = API_FORMATS.get(img.format or "")
        plain = img.mode in ("RGB", "L") and "transparency" not in img.info
    if mime is not None and plain:
        return mime, bytes(data)
    buf = io.BytesIO()
    decode_rgb(data).save(buf, format="PNG")
    return "image/png", buf.getvalue()
