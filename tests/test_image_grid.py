"""The one grid writer: cells, scaling and captions."""

from __future__ import annotations

from PIL import Image

from aldar_lit.image_grid import LINE_HEIGHT, image_grid


def test_images_at_their_size_fill_rows_of_columns() -> None:
    colours = ["red", "green", "blue"]
    grid = image_grid([Image.new("RGB", (8, 6), c) for c in colours], columns=2)
    assert grid.size == (16, 12)
    assert [grid.getpixel(xy) for xy in ((4, 3), (12, 3), (4, 9))] == [(255, 0, 0), (0, 128, 0), (0, 0, 255)]
    assert grid.getpixel((12, 9)) == (255, 255, 255)  # the empty cell stays white


def test_thumbnails_keep_their_aspect_ratio_centred_with_wrapped_captions() -> None:
    wide = Image.new("RGB", (64, 32), "red")
    grid = image_grid([wide, wide], columns=3, thumb=32, captions=["a " * 40, "b"], max_caption_lines=2)
    assert grid.size == (2 * 32, 32 + 2 * LINE_HEIGHT)  # two columns for two images; the longest caption's lines
    assert grid.getpixel((16, 7)) == (255, 255, 255) and grid.getpixel((16, 8)) == (255, 0, 0)  # 32x16, centred
    assert grid.getpixel((16, 23)) == (255, 0, 0) and grid.getpixel((16, 24)) == (255, 255, 255)
    caption_area = grid.crop((0, 32, 32, 32 + 2 * LINE_HEIGHT))
    assert caption_area.getextrema()[0][0] < 128  # text drawn under the image
