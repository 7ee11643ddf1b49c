"""Image decoding: every PIL mode keeps its picture (alpha over white, 16-bit rescaled), odd sizes, the pixel cap,
and the judge is sent the image's real type."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from r1v_ray.data.images import MAX_PIXELS, ImageError, api_image, decode_rgb
from r1v_ray.data.validate import RowError, check_image
from r1v_ray.engines.judge.base import image_clarity
from r1v_ray.engines.judge.openai_judge import _image_url
from r1v_ray.engines.rollout.types import RequestRejected, decode_image


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def halves(mode: str) -> Image.Image:
    """16x8: the left half dark, the right half light, in `mode`'s own value range."""
    dark, light = {
        "1": (0, 1),
        "L": (20, 230),
        "I;16": (1000, 64000),
        "I": (1000, 64000),
        "F": (0.05, 0.95),
    }[mode]
    a = np.full(
        (8, 16), dark, dtype={"1": bool, "L": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[mode]
    )
    a[:, 8:] = light
    return Image.fromarray(a) if mode != "I;16" else Image.fromarray(a).convert("I;16")


def two_tone(mode: str) -> bytes:
    if mode in ("1", "L", "I;16"):
        return encode(halves(mode))
    if mode in ("I", "F"):
        return encode(halves(mode), "TIFF")
    rgb = Image.fromarray(np.asarray(halves("L").convert("RGB")))
    if mode == "CMYK":
        return encode(rgb.convert("CMYK"), "JPEG", quality=95)
    if mode == "P":
        return encode(rgb.convert("P"))
    return encode(rgb.convert(mode))  # RGB, RGBA (opaque), LA (opaque)


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"])
def test_every_mode_keeps_its_picture(mode):
    data = two_tone(mode)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == mode or (mode == "I;16" and img.mode.startswith("I;16"))
    for decoded in (decode_rgb(data), decode_image(data)):
        rgb = np.asarray(decoded, dtype=np.float64)
        assert rgb.shape == (8, 16, 3)
        assert rgb[:, :8].mean() < 64 and rgb[:, 8:].mean() > 192, (rgb[:, :8].mean(), rgb[:, 8:].mean())


def strokes_on_transparent(mode: str) -> bytes:
    """A black cross on a fully transparent background (whose hidden colour is black too)."""
    a = np.zeros((16, 16, 4), dtype=np.uint8)
    a[7:9, :, 3] = a[:, 7:9, 3] = 255  # the strokes are opaque black
    img = Image.fromarray(a)
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = Image.fromarray((a[..., 3] > 0).astype(np.uint8)).convert("P")
        img.putpalette([0, 0, 0, 0, 0, 0])  # index 0 (transparent) and index 1 are both black
        return encode(img, transparency=0)
    return encode(img)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_onto_white(mode):
    data = strokes_on_transparent(mode)
    for decoded in (decode_rgb(data), decode_image(data)):  # the one decoder, also behind the rollout engine
        grey = np.asarray(decoded.convert("L"))
        assert grey[0, 0] == 255 and grey[7, 0] == 0 and grey[0, 7] == 0  # background white, strokes black
        assert len(np.unique(grey)) == 2  # was one flat colour
    assert image_clarity(data) > image_clarity(encode(Image.new("RGB", (16, 16))))  # the judge sees the strokes


def test_a_16_bit_gradient_stays_a_gradient():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (4, 1))
    grey = np.asarray(decode_image(encode(Image.fromarray(ramp).convert("I;16"))).convert("L"), dtype=np.int64)
    assert (grey == 255).mean() < 0.02  # was 99.6% white
    assert grey[0, 0] == 0 and grey[0, -1] == 255 and (np.diff(grey[0]) >= 0).all()


def test_odd_sizes_and_the_pixel_cap():
    one = decode_rgb(encode(Image.new("RGBA", (1, 1), (10, 20, 30, 255))))
    assert one.size == (1, 1) and one.getpixel((0, 0)) == (10, 20, 30)
    assert decode_rgb(encode(Image.new("L", (1, 3000), 7))).size == (1, 3000)
    big = encode(Image.new("1", (8000, 6400)))  # 51.2 M pixels in a few kB
    assert len(big) < 100_000 and 8000 * 6400 > MAX_PIXELS
    with pytest.raises(ImageError, match=r"image too large: 8000x6400 = 51200000 pixels > 50000000"):
        decode_rgb(big)
    with pytest.raises(RowError, match="image too large: 8000x6400"):
        check_image(big, max_bytes=10**7)
    with pytest.raises(RequestRejected, match="image too large"):
        decode_image(big)
    with pytest.raises(RowError, match="undecodable image"):
        check_image(encode(Image.new("RGB", (4, 4)))[:30], max_bytes=10**7)


def test_the_judge_gets_the_real_type_or_a_faithful_png():
    jpeg = encode(Image.new("RGB", (8, 8), (200, 10, 10)), "JPEG")
    assert _image_url(jpeg) == "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()
    png = encode(Image.new("L", (8, 8), 100))
    assert api_image(png) == ("image/png", png)
    for data in (strokes_on_transparent("RGBA"), two_tone("CMYK"), two_tone("F")):  # re-encoded as we decode them
        mime, sent = api_image(data)
        assert mime == "image/png"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(sent))), np.asarray(decode_rgb(data)))
