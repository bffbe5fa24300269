"""The visual tiny world: tiny-world problems whose question is in an image (issue 18).

Three task families of `worlds.World` (chosen with `world.tasks`, listed in `worlds.TASKS`):

    add_img    the image shows two numbers of `level` digits, one above the other, right-aligned
               as in column addition; the text asks "Add the two numbers in the image."; the
               trace is the `add` trace
    count_img  the image shows red and blue squares on a 4x4 grid: `level` to 2*`level` red ones
               and 1 to as many blue ones as red; the text asks how many more red squares there
               are than blue; the trace counts each colour and subtracts
    text_img   the whole question rendered as an image (text-rendered data): the image shows
               `347+285`, the text says "Solve the problem in the image."; the trace is `add`'s

A problem is a *key*, a short text: `347+285` for the two addition tasks, the grid row by row
for `count_img` (`R.B./..R./..../B..R`: R red, B blue, . empty). The key is what the prompt id
names and what the held-out split hashes, since the visible text is the same for every problem
of a task; `add`, `add_img` and `text_img` share keys, so a sum held out in one modality is held
out in all three. The image is a function of the key alone (`render`): black digits on white in
Pillow's built-in font (the Aileron face embedded in Pillow, `ImageFont.load_default`, no font
file) drawn without anti-aliasing, pure red (255, 0, 0) and blue (0, 0, 255) squares. Images are
small, in whole patches of a patch-14 vision encoder: 112x56 (8x4 patches) for digits, 112x112
(8x8) for squares. A prompt carries its image as PNG bytes, the form the loaders keep encoded
images in (`data/sources.py`).

For example `count_img` with 5 red and 3 blue squares:

    red 5
    blue 3
    5-3=2
    A: 2
"""

from __future__ import annotations

import io
import random

from longrl.data.images import pillow
from longrl.errors import ConfigError

IMAGE_TASKS = ("add_img", "count_img", "text_img")
QUESTIONS = {
    "add_img": "Add the two numbers in the image.",
    "count_img": "How many more red squares than blue squares?",
    "text_img": "Solve the problem in the image.",
}
MAX_LEVEL = {"add_img": 10, "count_img": 4, "text_img": 5}  # what fits the image (module docstring)

WIDTH, TEXT_HEIGHT, GRID_HEIGHT = 112, 56, 112  # pixels: 8x4 and 8x8 patches of 14
FONT_SIZE = 16  # a digit is 9 pixels wide and 11 high; 10 digits fill a 112-pixel line
MARGIN = 6  # pixels left clear on each side of the text
GRID, CELL, SQUARE = 4, 28, 16  # a 4x4 grid of 28-pixel cells (2x2 patches), 16-pixel squares
RED, BLUE = (255, 0, 0), (0, 0, 255)


def _draw_counts(level: int, rng: random.Random) -> tuple[str, int, list[str]]:
    red = rng.randint(level, 2 * level)
    blue = rng.randint(1, red)
    cells = rng.sample(range(GRID * GRID), red + blue)  # the first `red` cells are red
    grid = ["."] * (GRID * GRID)
    for k, cell in enumerate(cells):
        grid[cell] = "R" if k < red else "B"
    key = "/".join("".join(grid[row * GRID:(row + 1) * GRID]) for row in range(GRID))
    return key, red - blue, [f"red {red}", f"blue {blue}", f"{red}-{blue}={red - blue}"]


def make_problem(task: str, level: int, rng: random.Random) -> tuple[str, int, list[str]]:
    """Draw one problem of an image task: (key, answer, chain-of-thought lines)."""
    if task not in IMAGE_TASKS:
        raise ConfigError(f"unknown image task {task!r}; image tasks are {', '.join(IMAGE_TASKS)}")
    if level > MAX_LEVEL[task]:
        raise ConfigError(f"world: {task} runs to level {MAX_LEVEL[task]} (what fits its "
                          f"{WIDTH}-pixel image), not {level}: lower world.max_level")
    if task == "count_img":
        return _draw_counts(level, rng)
    from longrl.data.worlds import make_problem as make_text_problem

    return make_text_problem("add", level, rng)


def expression(task: str, key: str) -> str:
    """The arithmetic problem `key` asks for (a verbose trace verifies it): `347+285`, or `5-3`
    for 5 red and 3 blue squares."""
    if task == "count_img":
        return f"{key.count('R')}-{key.count('B')}"
    return key


def _canvas(height: int):
    PIL = pillow()
    image = PIL.Image.new("RGB", (WIDTH, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    draw.fontmode = "1"  # no anti-aliasing: every pixel is black or white
    return image, draw


def _font():
    return pillow().ImageFont.load_default(size=FONT_SIZE)


def render_numbers(a: str, b: str):
    """Two numbers one above the other, right-aligned, on a 112x56 image."""
    image, draw = _canvas(TEXT_HEIGHT)
    font = _font()
    for row, number in enumerate((a, b)):
        y = TEXT_HEIGHT // 4 * (2 * row + 1)  # centred in its half
        draw.text((WIDTH - MARGIN, y), number, fill="black", font=font, anchor="rm")
    return image


def render_text(text: str):
    """One line of text, centred on a 112x56 image."""
    image, draw = _canvas(TEXT_HEIGHT)
    draw.text((WIDTH // 2, TEXT_HEIGHT // 2), text, fill="black", font=_font(), anchor="mm")
    return image


def render_grid(key: str):
    """The squares of a `count_img` key (`R.B./...`), one per cell, on a 112x112 image."""
    image, draw = _canvas(GRID_HEIGHT)
    offset = (CELL - SQUARE) // 2
    for row, cells in enumerate(key.split("/")):
        for col, cell in enumerate(cells):
            if cell in "RB":
                x, y = col * CELL + offset, row * CELL + offset
                draw.rectangle((x, y, x + SQUARE - 1, y + SQUARE - 1), fill=RED if cell == "R" else BLUE)
    return image


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def render(task: str, key: str) -> bytes:
    """The image of problem `key` of `task`, as PNG bytes; the same key gives the same bytes."""
    if task == "add_img":
        return png(render_numbers(*key.split("+")))
    if task == "text_img":
        return png(render_text(key))
    if task == "count_img":
        return png(render_grid(key))
    raise ConfigError(f"unknown image task {task!r}; image tasks are {', '.join(IMAGE_TASKS)}")
