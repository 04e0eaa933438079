"""load_rgb: every colour mode becomes RGB uint8 at the requested size, every bad input a BadImageError."""
from __future__ import annotations

import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from revelio_svc.data import BadImageError, load_rgb
from revelio_svc.data.images import BACKGROUND

LIMIT = 1_000_000


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def noise_image(w: int = 64, h: int = 64) -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(w: int, h: int) -> bytes:
    """A valid 1-bit PNG of w x h written row by row, so a 10000x10000 image is ~12 kB on disk."""
    row = b"\0" * (1 + (w + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def assert_rgb(out: np.ndarray, size: int) -> None:
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8


# --------------------------------------------------------------------------- bad inputs
def test_corrupt_bytes_are_rejected():
    with pytest.raises(BadImageError, match="not an image"):
        load_rgb(np.random.default_rng(1).bytes(600), 16, LIMIT)


def test_png_with_corrupt_pixel_data_is_rejected():
    good = encode(noise_image(), "PNG")
    idat = good.index(b"IDAT") + 4
    broken = good[:idat + 10] + bytes(b ^ 0xFF for b in good[idat + 10: idat + 200]) + good[idat + 200:]
    with pytest.raises(BadImageError) as e:
        load_rgb(broken, 16, LIMIT)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_files_are_rejected(fmt):
    data = encode(noise_image(), fmt)
    with pytest.raises(BadImageError, match="truncated"):
        load_rgb(data[: len(data) // 2], 16, LIMIT)


def test_truncated_file_on_disk_names_the_path(tmp_path):
    data = encode(noise_image(), "PNG")
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="cut.png"):
        load_rgb(p, 16, LIMIT)


def test_text_file_is_rejected(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is not a picture\n")
    with pytest.raises(BadImageError, match="not an image"):
        load_rgb(p, 16, LIMIT)


def test_empty_bytes_missing_file_and_empty_record_are_rejected(tmp_path):
    with pytest.raises(BadImageError, match="0 bytes"):
        load_rgb(b"", 16, LIMIT)
    with pytest.raises(BadImageError, match="not found"):
        load_rgb(tmp_path / "nope.png", 16, LIMIT)
    with pytest.raises(BadImageError, match="neither"):
        load_rgb({"bytes": None, "path": None}, 16, LIMIT)


def test_unsupported_source_type_is_a_type_error():
    with pytest.raises(TypeError, match="cannot read a int"):
        load_rgb(42, 16, LIMIT)


def test_huge_image_is_rejected_from_its_header_without_decoding(monkeypatch):
    data = huge_png(10_000, 10_000)
    assert len(data) < 100_000  # the file is small: only the header says how big it is
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    t = time.perf_counter()
    with pytest.raises(BadImageError, match="10000x10000 = 100000000 pixels is over max_pixels=50000000"):
        load_rgb(data, 32, 50_000_000)
    assert time.perf_counter() - t < 1.0
    assert decoded == []


def test_pillow_decompression_bomb_error_becomes_bad_image(monkeypatch):
    # Pillow's own limit can be lower than ours; its error must not escape as a foreign exception
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(BadImageError, match="decompression-bomb"):
        load_rgb(encode(noise_image(100, 100), "PNG"), 16, LIMIT)


def test_arrays_over_the_limit_or_of_odd_shape_are_rejected():
    with pytest.raises(BadImageError, match="over max_pixels"):
        load_rgb(np.zeros((100, 100, 3), np.uint8), 16, 5000)
    with pytest.raises(BadImageError, match="channels last"):
        load_rgb(np.zeros((3, 32, 32), np.uint8), 16, LIMIT)
    with pytest.raises(BadImageError, match="no finite"):
        load_rgb(np.full((8, 8), np.nan, np.float32), 16, LIMIT)


# --------------------------------------------------------------------------- colour modes
def test_grayscale_and_bilevel_become_grey_rgb():
    out = load_rgb(encode(Image.new("L", (20, 30), 77), "PNG"), 16, LIMIT)
    assert_rgb(out, 16)
    assert (out == 77).all()
    out = load_rgb(encode(Image.new("1", (20, 30), 1), "PNG"), 16, LIMIT)
    assert (out == 255).all()


def test_la_is_composited_on_the_neutral_background():
    la = Image.new("LA", (16, 16), (200, 255))
    la.paste((200, 0), (0, 0, 8, 16))  # left half fully transparent
    out = load_rgb(encode(la, "PNG"), 16, LIMIT)
    assert_rgb(out, 16)
    assert (out[:, :6] == BACKGROUND).all()
    assert (out[:, 10:] == 200).all()


def test_rgba_is_composited_on_the_neutral_background():
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))
    out = load_rgb(encode(rgba, "PNG"), 8, LIMIT)
    assert (out == BACKGROUND).all()
    half = load_rgb(encode(Image.new("RGBA", (16, 16), (255, 0, 0, 128)), "PNG"), 8, LIMIT)
    assert np.allclose(half[0, 0], (191, 64, 64), atol=2)


def test_palette_with_and_without_transparency():
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    pal.paste(0, (0, 0, 16, 8))  # top half red, bottom half green
    plain = load_rgb(encode(pal, "PNG"), 16, LIMIT)
    assert (plain[:6] == (255, 0, 0)).all() and (plain[10:] == (0, 255, 0)).all()
    pal.info["transparency"] = 1  # green becomes transparent
    out = load_rgb(encode(pal, "PNG", transparency=1), 16, LIMIT)
    assert (out[:6] == (255, 0, 0)).all()
    assert (out[10:] == BACKGROUND).all()


def test_cmyk_jpeg_becomes_rgb():
    out = load_rgb(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95), 8, LIMIT)
    assert_rgb(out, 8)
    r, g, b = out[4, 4].astype(int)
    assert r > 240 and g < 15 and b < 15


def test_16bit_png_is_scaled_by_its_range_not_clipped():
    ramp = np.linspace(1000, 3000, 256).reshape(16, 16).astype(np.uint16)
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = load_rgb(data, 16, LIMIT)
    assert_rgb(out, 16)
    # clipping to 255 would make every pixel white; range scaling keeps the ramp
    assert out.min() <= 2 and out.max() >= 253
    assert out[0, 0, 0] < out[8, 8, 0] < out[15, 15, 0]


@pytest.mark.parametrize("mode,dtype", [("I;16B", ">u2"), ("I;16", "<u2"), ("I", "<i4")])
def test_high_bit_pil_modes_are_scaled_by_their_range(mode, dtype):
    ramp = np.linspace(40_000, 60_000, 256).reshape(16, 16).astype(dtype)
    img = Image.frombytes(mode, (16, 16), ramp.tobytes())
    out = load_rgb(img, 16, LIMIT)
    assert out.min() <= 2 and out.max() >= 253


def test_float_tiff_is_scaled_by_its_range():
    ramp = np.linspace(-5.0, 5.0, 256).reshape(16, 16).astype(np.float32)
    data = encode(Image.fromarray(ramp), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    out = load_rgb(data, 16, LIMIT)
    assert out.min() <= 2 and out.max() >= 253
    assert out[0, 0, 0] < out[15, 15, 0]


def test_one_by_one_image_is_upscaled():
    out = load_rgb(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"), 32, LIMIT)
    assert_rgb(out, 32)
    assert (out == (10, 20, 30)).all()


def test_exif_orientation_is_applied():
    # 40x20: left half red, right half blue. Orientation 6 means "rotate 90 degrees clockwise to view",
    # which puts red on top; ignoring it would put red on the left.
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_rgb(encode(img, "JPEG", exif=exif.tobytes(), quality=95), 16, LIMIT).astype(int)
    assert out[2, 8, 0] > 200 and out[2, 8, 2] < 50  # top: red
    assert out[13, 8, 2] > 200 and out[13, 8, 0] < 50  # bottom: blue


def test_non_square_jpeg_is_centre_cropped():
    img = Image.new("RGB", (300, 100), (0, 255, 0))
    img.paste((255, 0, 0), (100, 0, 200, 100))  # only the centre square is red
    raw = load_rgb(encode(img, "JPEG", quality=95), 16, LIMIT)
    assert_rgb(raw, 16)
    out = raw.astype(int)
    assert (out[:, 2:14, 0] > 200).all() and (out[:, 2:14, 1] < 60).all()


# --------------------------------------------------------------------------- other sources
def test_sources_agree_bytes_path_pil_dict_array(tmp_path):
    img = noise_image(48, 32)
    data = encode(img, "PNG")
    p = tmp_path / "x.png"
    p.write_bytes(data)
    ref = load_rgb(data, 16, LIMIT)
    for src in (p, str(p), img, {"bytes": data, "path": "ignored.png"}, {"bytes": None, "path": str(p)},
                np.asarray(img)):
        assert np.array_equal(load_rgb(src, 16, LIMIT), ref), type(src)


def test_arrays_of_other_dtypes_and_channels():
    assert (load_rgb(np.ones((8, 8), bool), 8, LIMIT) == 255).all()
    grey = load_rgb(np.linspace(0, 1, 64).reshape(8, 8), 8, LIMIT)
    assert grey.min() == 0 and grey.max() >= 250
    rgba = np.zeros((8, 8, 4), np.uint8)  # fully transparent
    assert (load_rgb(rgba, 8, LIMIT) == BACKGROUND).all()
    one_channel = load_rgb(np.full((8, 8, 1), 9, np.uint8), 8, LIMIT)
    assert (one_channel == 9).all()


def test_bad_arguments_are_value_errors():
    with pytest.raises(ValueError, match="size"):
        load_rgb(np.zeros((8, 8), np.uint8), 0, LIMIT)
    with pytest.raises(ValueError, match="max_pixels"):
        load_rgb(np.zeros((8, 8), np.uint8), 8, 0)
