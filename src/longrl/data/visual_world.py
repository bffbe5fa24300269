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
file) drawn without anti-aliasing, pure red (255, 0, 0) and blue (0, 0, 255) squares.

Every character and every square sits centred in a cell of its own, 28x28 pixels: the 2x2 patches
of 14 pixels that a Qwen2-VL vision tower merges into one image token. Lines are right-aligned in
a fixed number of cells, so a number's ones digit is always the same token. Measured with glyphs
set as running text instead (16-pixel type, 112-pixel lines, three digits to a token, a digit cut
between two tokens wherever the line put it): 1,200 SFT steps of the tiny VLM at levels 2-3 read
`add_img` and `text_img` at 0.06 and 0.05 pass@1, chain of thought or not, while counting reached
0.99 (docs/vision.md). Images are 224x56 (two lines of 8 cells) for `add_img`, 308x28 (one line of
11 cells) for `text_img`, 112x112 (a 4x4 grid of cells) for `count_img`. A prompt carries its
image as PNG bytes, the form the loaders keep encoded images in (`data/sources.py`).

For example `count_img` with 5 red and 3 blue squares:

    red 5
    blue 3
    5-3=2
    A: 2
"""

from __future__ import annotations

import functools
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
CELL = 28  # pixels: one character or square per cell, the 2x2 patches of one image token
ADD_CELLS, TEXT_CELLS = 8, 11  # cells per line: add_img's numbers, text_img's `a+b`
MAX_LEVEL = {"add_img": ADD_CELLS, "count_img": 4, "text_img": (TEXT_CELLS - 1) // 2}  # what fits
FONT_SIZE = 22  # a digit is 12 pixels wide and 16 high: it fits its cell with room around it
GRID, SQUARE = 4, 16  # count_img: a 4x4 grid of cells, 16-pixel squares
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
                          f"image), not {level}: lower world.max_level")
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


def _canvas(width: int, height: int):
    PIL = pillow()
    image = PIL.Image.new("RGB", (width, height), "white")
    draw = PIL.ImageDraw.Draw(image)
    draw.fontmode = "1"  # no anti-aliasing: every pixel is black or white
    return image, draw


@functools.cache
def _font():  # parsed once: every prompt's image is drawn with it
    return pillow().ImageFont.load_default(size=FONT_SIZE)


def _draw_line(draw, font, text: str, cells: int, row: int) -> None:
    """`text` right-aligned in a line of `cells` cells, each character centred in its cell."""
    if len(text) > cells:
        raise ValueError(f"{text!r} does not fit a line of {cells} cells")
    first = cells - len(text)
    for k, char in enumerate(text):
        centre = ((first + k) * CELL + CELL // 2, row * CELL + CELL // 2)
        draw.text(centre, char, fill="black", font=font, anchor="mm")


def render_numbers(a: str, b: str):
    """Two numbers one above the other, right-aligned in two lines of 8 cells (224x56)."""
    image, draw = _canvas(ADD_CELLS * CELL, 2 * CELL)
    font = _font()
    for row, number in enumerate((a, b)):
        _draw_line(draw, font, number, ADD_CELLS, row)
    return image


def render_text(text: str):
    """One line of text, right-aligned in 11 cells (308x28)."""
    image, draw = _canvas(TEXT_CELLS * CELL, CELL)
    _draw_line(draw, _font(), text, TEXT_CELLS, 0)
    return image


def render_grid(key: str):
    """The squares of a `count_img` key (`R.B./...`), one per cell, on a 112x112 image."""
    image, draw = _canvas(GRID * CELL, GRID * CELL)
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
