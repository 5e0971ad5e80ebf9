"""Pictures: (C, H, W) float32 in [0, 1] for gray/RGB PNG, JPEG and TIFF, 8 and 16 bits, and bad files."""

from __future__ import annotations

import os

import numpy as np
import pytest
from io_doubles import assert_one_line_naming
from PIL import Image

from qdm_med.errors import InputError, OutputError
from qdm_med.io import is_image_path, is_volume_path, load_image, save_image


def _picture(c: int, h: int = 12, w: int = 9) -> np.ndarray:
    rng = np.random.RandomState(c)
    return (rng.randint(0, 256, size=(c, h, w)) / 255.0).astype(np.float32)


@pytest.mark.parametrize("name", ["p.png", "p.tif", "p.tiff"])
@pytest.mark.parametrize("c", [1, 3])
def test_lossless_round_trip(tmp_path, name, c):
    pic = _picture(c)
    save_image(pic, tmp_path / name)
    back = load_image(tmp_path / name)
    assert back.dtype == np.float32 and back.shape == (c, 12, 9)
    np.testing.assert_allclose(back, pic, atol=1e-6)


@pytest.mark.parametrize("c", [1, 3])
def test_jpeg_round_trip_is_close(tmp_path, c):
    y, x = np.mgrid[0:32, 0:24] / 32.0
    pic = np.stack([0.2 + 0.6 * y * x] * c).astype(np.float32)  # smooth: JPEG keeps it within a few levels
    save_image(pic, tmp_path / "p.jpg")
    back = load_image(tmp_path / "p.jpg")
    assert back.shape == (c, 32, 24)
    assert np.abs(back - pic).max() < 0.03


@pytest.mark.parametrize("name", ["deep.png", "deep.tif"])
def test_sixteen_bit_gray(tmp_path, name):
    pic = np.linspace(0, 1, 12 * 9, dtype=np.float32).reshape(1, 12, 9)
    save_image(pic, tmp_path / name, bit_depth=16)
    assert Image.open(tmp_path / name).mode.startswith("I")
    np.testing.assert_allclose(load_image(tmp_path / name), pic, atol=1 / 65535)
    with pytest.raises(OutputError):
        save_image(_picture(3), tmp_path / "deep_rgb.png", bit_depth=16)


def test_rgba_palette_and_float_tiff(tmp_path):
    rgba = np.zeros((5, 4, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    back = load_image(tmp_path / "alpha.png")
    assert back.shape == (3, 5, 4)
    np.testing.assert_allclose(back[0], 200 / 255)
    Image.fromarray(rgba[..., :3], "RGB").convert("P").save(tmp_path / "palette.png")
    assert load_image(tmp_path / "palette.png").shape == (3, 5, 4)
    Image.fromarray(np.full((3, 2), 0.25, np.float32), "F").save(tmp_path / "float.tif")
    np.testing.assert_allclose(load_image(tmp_path / "float.tif"), 0.25)


def test_uint8_and_torch_inputs(tmp_path):
    import torch

    save_image(np.full((1, 4, 3), 7, np.uint8), tmp_path / "u8.png")
    np.testing.assert_allclose(load_image(tmp_path / "u8.png"), 7 / 255)
    save_image(torch.full((3, 4, 3), 2.0), tmp_path / "clip.png")  # clipped to 1
    np.testing.assert_allclose(load_image(tmp_path / "clip.png"), 1.0)
    with pytest.raises(ValueError):
        save_image(np.zeros((2, 4, 3)), tmp_path / "two.png")


def test_bad_inputs(tmp_path):
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "missing.png")
    assert_one_line_naming(err, "missing.png")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "notes.txt")
    assert_one_line_naming(err, "notes.txt")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG garbage" * 10)
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "junk.png")
    assert_one_line_naming(err, "junk.png")
    save_image(_picture(3, 64, 64), tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "cut.png")
    assert_one_line_naming(err, "cut.png")
    frames = [Image.fromarray(np.zeros((3, 3), np.uint8)) for _ in range(2)]
    frames[0].save(tmp_path / "pages.tif", save_all=True, append_images=frames[1:])
    with pytest.raises(InputError) as err:
        load_image(tmp_path / "pages.tif")
    assert "multi-page" in assert_one_line_naming(err, "pages.tif")


def test_existing_output_refused_and_failed_write_leaves_nothing(tmp_path, monkeypatch):
    save_image(_picture(1), tmp_path / "a.png")
    before = (tmp_path / "a.png").read_bytes()
    with pytest.raises(OutputError) as err:
        save_image(_picture(3), tmp_path / "a.png")
    assert_one_line_naming(err, "a.png")
    assert (tmp_path / "a.png").read_bytes() == before
    save_image(_picture(3), tmp_path / "a.png", overwrite=True)
    assert load_image(tmp_path / "a.png").shape[0] == 3
    with pytest.raises(OutputError):
        save_image(_picture(1), tmp_path / "a.bmp")

    def boom(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError):
        save_image(_picture(1), tmp_path / "b.png")
    assert sorted(os.listdir(tmp_path)) == listing


def test_path_kinds(tmp_path):
    assert is_image_path("a.PNG") and is_image_path("b.jpeg") and is_image_path("c.tiff")
    assert not is_image_path("d.nii.gz") and not is_image_path("e")
    for name in ["a.nii", "b.NII.GZ", "c.nrrd", "d.mha", "e.mhd", "f.dcm"]:
        assert is_volume_path(name), name
    assert is_volume_path(tmp_path)  # a folder: a DICOM series
    assert not is_volume_path("g.png") and not is_volume_path("h.txt")


def test_alpha_and_bit_depth_round_trip(tmp_path):
    from PIL import Image

    from qdm_med.io.images import load_image, save_image

    la = np.zeros((6, 8, 2), np.uint8)
    la[..., 0] = 200
    la[:, :4, 1] = 255
    Image.fromarray(la).save(tmp_path / "la.png")
    arr, info = load_image(tmp_path / "la.png", return_info=True)
    assert arr.shape == (1, 6, 8) and info["bit_depth"] == 8 and info["mode"] == "LA"
    np.testing.assert_array_equal(info["alpha"][0], la[..., 1] / 255.0)
    save_image(arr, tmp_path / "back.png", alpha=info["alpha"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "back.png")), la)
    pal = Image.new("P", (4, 3))
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    arr, info = load_image(tmp_path / "pal.png", return_info=True)
    assert arr.shape == (3, 3, 4) and info["alpha"][0, 1, 1] == 1.0 and info["alpha"][0, 0, 0] == 0.0
    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(g16).save(tmp_path / "g16.png")
    arr, info = load_image(tmp_path / "g16.png", return_info=True)
    assert info["bit_depth"] == 16 and info["alpha"] is None
    save_image(arr, tmp_path / "g16b.png", bit_depth=16)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "g16b.png")), g16)
    with pytest.raises(OutputError, match="alpha"):
        save_image(arr, tmp_path / "x.jpg", alpha=np.ones((3, 4)))


def test_16_bit_colour_png_says_it_is_read_with_8_bits(tmp_path, qdm_warnings):
    import SimpleITK as sitk

    from qdm_med.io.images import load_image

    rgb16 = (np.random.RandomState(0).rand(6, 8, 3) * 65535).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(rgb16, isVector=True), str(tmp_path / "rgb16.png"))
    arr, info = load_image(tmp_path / "rgb16.png", return_info=True)
    assert arr.shape == (3, 6, 8) and info["bit_depth"] == 8
    assert any("16-bit colour PNG read with 8 bits" in m and "rgb16.png" in m for m in qdm_warnings())
