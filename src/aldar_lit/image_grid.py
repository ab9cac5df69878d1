"""The one grid writer: validation grids, storyboard and evaluation contact sheets, curation contact sheets."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import Optional

from PIL import Image, ImageDraw, ImageFont

LINE_HEIGHT = 14


def image_grid(images: Sequence[Image.Image], columns: int, thumb: Optional[int] = None,
               captions: Optional[Sequence[str]] = None, max_caption_lines: int = 4) -> Image.Image:
    """`images` in rows of `columns` on white, each with its caption (wrapped) underneath.

    Without `thumb` every cell has the first image's size and images are pasted as they are; with it each
    image is scaled to fit a `thumb` x `thumb` cell, keeping its aspect ratio, and centred there.
    """
    cell_width, cell_height = (thumb, thumb) if thumb else images[0].size
    chars_per_line = max(12, cell_width // 7)
    wrapped = [textwrap.wrap(caption, chars_per_line)[:max_caption_lines] for caption in captions or []]
    caption_height = LINE_HEIGHT * max((len(lines) for lines in wrapped), default=0)
    columns = max(1, min(columns, len(images)))
    rows = max(1, math.ceil(len(images) / columns))
    grid = Image.new("RGB", (columns * cell_width, rows * (cell_height + caption_height)), "white")
    draw, font = ImageDraw.Draw(grid), ImageFont.load_default()
    for index, image in enumerate(images):
        x, y = (index % columns) * cell_width, (index // columns) * (cell_height + caption_height)
        image = image.convert("RGB")
        if thumb:
            scale = thumb / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        grid.paste(image, (x + (cell_width - image.width) // 2, y + (cell_height - image.height) // 2))
        for line_no, line in enumerate(wrapped[index] if index < len(wrapped) else []):
            draw.text((x + 2, y + cell_height + 1 + LINE_HEIGHT * line_no), line, fill="black", font=font)
    return grid
