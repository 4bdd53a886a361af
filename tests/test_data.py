"""Reading images: bit depths and modes, one decoder for load_image and ImageFolder, names (issue #10)."""

import numpy as np
import pytest
import torch
from PIL import Image

from bitalloc.data import ImageFolder, decode_image, load_image, resolve_images


def _gray16() -> np.ndarray:
    """A 16-bit ramp whose values do not survive 8 bits (most are far above 255)."""
    return (np.arange(48 * 64, dtype=np.int64).reshape(48, 64) * 21 % 65536).astype(np.uint16)


def test_16_bit_grayscale_png_is_scaled_from_its_bit_depth(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(_gray16()).save(path)
    assert Image.open(path).mode == "I;16"  # what a 16-bit grayscale PNG opens as
    x = load_image(path)
    expected = torch.from_numpy(_gray16().astype(np.float32) / 65535)
    assert x.shape == (3, 48, 64) and x.dtype == torch.float32
    for channel in x:  # grayscale becomes three equal channels
        assert torch.allclose(channel, expected, atol=1e-6)
    assert x.mean().item() == pytest.approx(expected.mean().item(), abs=1e-6) and x.mean() < 0.6  # not white


def test_16_bit_tiff_and_8_bit_copy_agree(tmp_path):
    gray = _gray16()
    Image.fromarray(gray).save(tmp_path / "g16.tif")
    Image.fromarray((gray >> 8).astype(np.uint8)).save(tmp_path / "g8.png")
    x16, x8 = load_image(tmp_path / "g16.tif"), load_image(tmp_path / "g8.png")
    assert (x16 - x8).abs().max().item() <= 1 / 255 + 1e-6


def test_image_folder_uses_the_same_decoder(tmp_path):
    Image.fromarray(_gray16()).save(tmp_path / "a.png")
    rgb = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    whole = ImageFolder(tmp_path)
    assert torch.equal(whole[0], load_image(tmp_path / "a.png"))
    assert torch.equal(whole[1], load_image(tmp_path / "b.png"))
    crops = ImageFolder(tmp_path, crop=32, flips=False, seed=0)
    patch = crops[0]
    assert patch.shape == (3, 32, 32) and 0 <= patch.min() and patch.max() <= 1 and patch.mean() < 0.9
    # a crop is a window of the whole image
    full = load_image(tmp_path / "a.png")[0]
    windows = full.unfold(0, 32, 1).unfold(1, 32, 1)
    assert (windows == patch[0]).flatten(2).all(-1).any()


@pytest.mark.parametrize("mode,array", [("F", np.full((8, 8), 0.5, np.float32)),
                                        ("I", np.full((8, 8), 70000, np.int32))], ids=["float", "int32"])
def test_unsupported_modes_name_the_file_and_mode(tmp_path, mode, array):
    path = tmp_path / f"odd_{mode}.tif"
    Image.fromarray(array).save(path)
    assert Image.open(path).mode == mode
    with pytest.raises(ValueError, match=rf"odd_{mode}\.tif: Pillow mode '{mode}' is not supported"):
        load_image(path)
    with pytest.raises(ValueError, match=rf"odd_{mode}\.tif"):
        ImageFolder(tmp_path)


def test_eight_bit_modes_still_read(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    pixels, full = decode_image(tmp_path / "rgb.png")
    assert full == 255 and pixels.dtype == torch.uint8 and torch.equal(pixels, torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(load_image(tmp_path / "rgba.png"), load_image(tmp_path / "rgb.png"))
    gray = load_image(tmp_path / "gray.png")
    assert torch.equal(gray[0], gray[2]) and torch.allclose(gray[0], torch.from_numpy(rgb[..., 0] / 255).float())


def test_two_files_with_one_name_are_an_error_naming_both(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    Image.fromarray(rgb).save(tmp_path / "x.png")
    Image.fromarray(rgb).save(tmp_path / "x.jpg")
    Image.fromarray(rgb).save(tmp_path / "y.png")
    for limit in (None, 1):  # checked over the whole folder, not only the images kept
        with pytest.raises(ValueError, match=r"x\.jpg and .*x\.png share the name 'x'"):
            resolve_images(tmp_path, limit=limit)
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(rgb).save(tmp_path / folder / "x.png")
    with pytest.raises(ValueError, match=r"a[/\\]x\.png and .*b[/\\]x\.png share the name 'x'"):
        resolve_images([tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"])


def test_limit_keeps_the_first_images_and_must_be_positive(tmp_path):
    for name in "abc":
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / f"{name}.png")
    assert list(resolve_images(tmp_path, limit=2)) == ["a", "b"]
    assert list(resolve_images(tmp_path)) == ["a", "b", "c"]
    for bad in (-1, 0, 1.5):  # -1 used to drop the last image
        with pytest.raises(ValueError, match=rf"limit must be a positive number of images or None, got {bad}"):
            resolve_images(tmp_path, limit=bad)
