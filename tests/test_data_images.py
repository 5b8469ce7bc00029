"""Decoding every kind of image and bad file: modes to RGB, EXIF orientation, bombs, reasons."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from helpers import write_png_header_only
from PIL import Image

from vggfeat.data.images import ImageError, decode_rgb_tensor, find_images, load_rgb, load_rgb_tensor


@pytest.fixture
def rgb():
    return np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)


def test_modes_become_rgb(tmp_path, rgb):
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.gif")
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:5, :5, 3] = 0  # transparent corner
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    sixteen = rgb[..., 1].astype(np.uint16) * 257
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    for name in ("gray.png", "cmyk.jpg", "palette.gif", "alpha.png", "sixteen.png"):
        img = load_rgb(tmp_path / name)
        assert img.mode == "RGB" and img.size == (60, 40), name
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "gray.png"))[..., 2], rgb[..., 0])
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "sixteen.png"))[..., 0], rgb[..., 1])
    alpha = np.asarray(load_rgb(tmp_path / "alpha.png"))
    assert (alpha[:5, :5] == 255).all() and np.array_equal(alpha[10:, 10:], rgb[10:, 10:])


def test_exif_orientation_is_applied(tmp_path, rgb):
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "rotated.jpg").size == (40, 60)


@pytest.mark.parametrize(
    "kind,reason",
    [
        ("empty", "empty file"),
        ("garbage", "not an image"),
        ("truncated", "truncated or corrupt"),
        ("bomb", "decompression bomb"),
    ],
)
@pytest.mark.parametrize("load", [load_rgb, load_rgb_tensor], ids=["pil", "tensor"])
def test_bad_files_have_reasons(tmp_path, rgb, kind, reason, load):
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.touch()
    elif kind == "garbage":
        path.write_bytes(b"GIF? no, just text\n" * 10)
    elif kind == "truncated":
        Image.fromarray(rgb).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        path = tmp_path / "truncated.jpg"
        path.write_bytes(data[: len(data) // 2])
    else:
        write_png_header_only(path, 30000, 30000)
    with pytest.raises(ImageError) as err:
        load(path)
    assert reason in err.value.reason and str(path) in str(err.value)


def test_jpeg_draft_decodes_smaller_but_not_below_min_side(tmp_path):
    big = np.random.default_rng(1).integers(0, 256, (800, 1200, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "big.jpg")
    assert load_rgb(tmp_path / "big.jpg", min_side=300).size == (600, 400)  # 1/2 keeps min side >= 300
    assert load_rgb(tmp_path / "big.jpg", min_side=500).size == (1200, 800)  # 1/2 would go below 500
    assert load_rgb(tmp_path / "big.jpg").size == (1200, 800)


def test_find_images_files_folders_and_lists(tmp_path, rgb):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for rel in ("a/1.jpg", "a/b/2.PNG", "a/notes.txt", "3.jpg"):
        Image.fromarray(rgb).save(tmp_path / rel, format="PNG") if not rel.endswith("txt") else (
            tmp_path / rel
        ).write_text("x")
    assert [p.name for p in find_images([tmp_path / "a"])] == ["1.jpg", "2.PNG"]
    (tmp_path / "list.txt").write_text("# my images\n3.jpg\n\na/1.jpg\n")
    assert [p.name for p in find_images([f"@{tmp_path / 'list.txt'}"])] == ["3.jpg", "1.jpg"]
    (tmp_path / "bad.txt").write_text("3.jpg\nmissing.jpg\n")
    with pytest.raises(FileNotFoundError, match=r"bad.txt, line 2: no such file 'missing.jpg'"):
        find_images([f"@{tmp_path / 'bad.txt'}"])
    with pytest.raises(FileNotFoundError, match="nope"):
        find_images([tmp_path / "nope"])


def _tensor_as_array(t):
    assert t.dtype == torch.uint8 and t.shape[0] == 3
    return t.permute(1, 2, 0).numpy()


def test_tensor_decoder_equals_pil_decoder(tmp_path, rgb, monkeypatch):
    """load_rgb_tensor: the same pixels as load_rgb, through torchvision's decoder where it applies."""
    import torchvision.io

    smooth = np.asarray(Image.fromarray(rgb).resize((300, 200), Image.BILINEAR))
    Image.fromarray(smooth).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(smooth).save(tmp_path / "progressive.jpg", quality=90, progressive=True)
    Image.fromarray(smooth[..., 0]).save(tmp_path / "gray.jpg")
    Image.fromarray(smooth).convert("CMYK").save(tmp_path / "cmyk.jpg")
    Image.fromarray(smooth).save(tmp_path / "photo.png")
    img = Image.fromarray(smooth)
    exif = img.getexif()
    exif[0x0112] = 6  # rotated: 200 x 300 once displayed
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    big = np.asarray(Image.fromarray(rgb).resize((1200, 800), Image.BILINEAR))
    Image.fromarray(big).save(tmp_path / "big.jpg")

    calls = []
    real = torchvision.io.decode_jpeg
    monkeypatch.setattr(torchvision.io, "decode_jpeg", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = {"photo.jpg", "progressive.jpg", "gray.jpg", "rotated.jpg"}
    for name in sorted(fast) + ["cmyk.jpg", "photo.png"]:
        calls.clear()
        got = _tensor_as_array(load_rgb_tensor(tmp_path / name, min_side=150))
        np.testing.assert_array_equal(got, np.asarray(load_rgb(tmp_path / name, min_side=150)), err_msg=name)
        assert bool(calls) == (name in fast), name
        calls.clear()  # a tar member's bytes take the same way
        got = _tensor_as_array(decode_rgb_tensor((tmp_path / name).read_bytes(), f"s.tar:{name}", min_side=150))
        np.testing.assert_array_equal(got, np.asarray(load_rgb(tmp_path / name, min_side=150)), err_msg=name)
        assert bool(calls) == (name in fast), name
    assert load_rgb_tensor(tmp_path / "rotated.jpg").shape == (3, 300, 200)
    # noise in the entropy-coded data: torchvision refuses it, PIL decodes it - and so do we, as load_rgb
    data = (tmp_path / "photo.jpg").read_bytes()
    head = data.index(b"\xff\xda")
    noise = np.random.default_rng(0).integers(0, 255, len(data) - head - 40, dtype=np.uint8).tobytes()
    (tmp_path / "corrupt.jpg").write_bytes(data[: head + 20] + noise.replace(b"\xff", b"\x00"))
    np.testing.assert_array_equal(
        _tensor_as_array(load_rgb_tensor(tmp_path / "corrupt.jpg")), np.asarray(load_rgb(tmp_path / "corrupt.jpg"))
    )
    calls.clear()  # 1/2 DCT scaling applies: PIL's draft mode, not the full-size decoder
    assert load_rgb_tensor(tmp_path / "big.jpg", min_side=300).shape == (3, 400, 600) and not calls
    assert load_rgb_tensor(tmp_path / "big.jpg", min_side=500).shape == (3, 800, 1200) and calls


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_by_name_before_decoding(tmp_path):
    os.mkfifo(tmp_path / "a.jpg")  # a decoder opening it would wait for a writer: refused from its stat alone
    with pytest.raises(ImageError, match=r"a\.jpg: a FIFO, not a regular file"):
        load_rgb(tmp_path / "a.jpg")
