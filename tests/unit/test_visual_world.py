"""The visual tiny world: each image shows its problem, traces are right, the split is disjoint."""

import random
import re

import pytest

from longrl.config import ConfigError, WorldConfig
from longrl.data import visual_world
from longrl.data.images import load_image
from longrl.data.sources import load_source
from longrl.data.worlds import _add_trace, format_trace, is_held_out, make_problem, World
from longrl.rewards.registry import get_reward

WHITE, BLACK, RED, BLUE = (255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 0, 255)
LEVELS = {"add_img": (1, 8), "count_img": (1, 4), "text_img": (1, 5)}  # every level each task runs to


def world(task, **changes):
    low, high = LEVELS[task]
    return World(WorldConfig(**{"tasks": [task], "min_level": low, "max_level": high, "eval_size": 40, **changes}))


def key(prompt):
    return prompt.id.split(":", 1)[1]


def image(prompt):
    (data,) = prompt.images
    return load_image(data)


# -- reading an image back: glyphs and squares ---------------------------------------------------


def glyphs(picture, top, bottom):
    """The ink shapes between rows `top` and `bottom`, left to right, each cropped to its ink."""
    px = picture.load()
    ink = [[px[x, y] != WHITE for x in range(picture.width)] for y in range(top, bottom)]
    columns = [any(row[x] for row in ink) for x in range(picture.width)] + [False]
    shapes, start = [], None
    for x, inked in enumerate(columns):
        if inked and start is None:
            start = x
        elif not inked and start is not None:
            rows = [tuple(row[start:x]) for row in ink if any(row[start:x])]
            shapes.append(tuple(rows))
            start = None
    return shapes


# one shape per character, taken from a line that no problem draws
ALPHABET = "0123456789+"
GLYPHS = dict(zip(glyphs(visual_world.render_text("0123456789"), 0, 28), "0123456789"))
GLYPHS[glyphs(visual_world.render_text("+"), 0, 28)[0]] = "+"


def read(picture, top, bottom):
    return "".join(GLYPHS[shape] for shape in glyphs(picture, top, bottom))


def squares(picture):
    """{colour: sizes of its 4-connected blobs}, found by flood fill."""
    px, seen, blobs = picture.load(), set(), {RED: [], BLUE: []}
    for start in ((x, y) for y in range(picture.height) for x in range(picture.width)):
        colour = px[start]
        if colour not in blobs or start in seen:
            continue
        stack, size = [start], 0
        seen.add(start)
        while stack:
            x, y = stack.pop()
            size += 1
            for near in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if (0 <= near[0] < picture.width and 0 <= near[1] < picture.height
                        and near not in seen and px[near] == colour):
                    seen.add(near)
                    stack.append(near)
        blobs[colour].append(size)
    return blobs


def test_the_glyph_table_reads_every_character_apart():
    assert len(GLYPHS) == len(ALPHABET) == 11  # no two characters share a shape
    assert read(visual_world.render_text("9081+7263"), 0, 28) == "9081+7263"


# -- problems by hand ----------------------------------------------------------------------------


def test_count_img_problem_by_hand():
    rng = random.Random()
    counts = iter([3, 2])  # 3 red, then 2 blue
    rng.randint = lambda a, b: next(counts)
    rng.sample = lambda cells, k: [0, 5, 15, 1, 10][:k]  # the first 3 cells red, the rest blue
    text, answer, lines = make_problem("count_img", 2, rng)
    assert (text, answer) == ("RB../.R../..B./...R", 1)
    assert lines == ["red 3", "blue 2", "3-2=1"]
    assert format_trace(lines, answer) == "red 3\nblue 2\n3-2=1\nA: 1"
    assert visual_world.expression("count_img", text) == "3-2"


def test_grid_image_by_hand():
    # cell (row r, column c) spans pixels 28c..28c+27; its square is the 16 pixels from 28c + 6
    picture = visual_world.render_grid("RB../.R../..B./...R")
    assert picture.size == (112, 112)
    assert picture.getpixel((6, 6)) == picture.getpixel((21, 21)) == RED  # cell (0, 0)
    assert picture.getpixel((5, 6)) == picture.getpixel((22, 21)) == WHITE
    assert picture.getpixel((34, 6)) == picture.getpixel((49, 21)) == BLUE  # cell (0, 1)
    assert picture.getpixel((28 + 6, 28 + 6)) == RED  # cell (1, 1)
    assert picture.getpixel((56 + 6, 56 + 6)) == BLUE  # cell (2, 2)
    assert picture.getpixel((84 + 21, 84 + 21)) == RED  # cell (3, 3)
    assert squares(picture) == {RED: [256, 256, 256], BLUE: [256, 256]}
    assert {colour for _, colour in picture.getcolors()} == {WHITE, RED, BLUE}


def test_digit_images_by_hand():
    picture = visual_world.render_numbers("347", "285")
    assert picture.size == (224, 56)  # two lines of 8 cells of 28 pixels
    assert (read(picture, 0, 28), read(picture, 28, 56)) == ("347", "285")
    assert {colour for _, colour in picture.getcolors()} == {WHITE, BLACK}  # crisp: no anti-aliased greys
    # each digit inside its own cell (one image token), right-aligned: cells 5, 6, 7 of each line
    for row, number in enumerate(("347", "285")):
        for cell in range(8):
            ink = [picture.getpixel((x, y)) == BLACK for x in range(28 * cell, 28 * cell + 28)
                   for y in range(28 * row, 28 * row + 28)]
            assert any(ink) == (cell >= 5)
            if cell >= 5:
                assert read(picture.crop((28 * cell, 28 * row, 28 * cell + 28, 28 * row + 28)), 0, 28) == number[cell - 5]
    text = visual_world.render_text("347+285")
    assert text.size == (308, 28) and read(text, 0, 28) == "347+285"
    assert not any(text.getpixel((x, y)) == BLACK for x in range(4 * 28) for y in range(28))  # cells 0-3 empty


# -- worlds of visual tasks ----------------------------------------------------------------------


@pytest.mark.parametrize("task", ["add_img", "text_img"])
def test_addition_prompts_show_their_numbers_and_carry_the_add_trace(task):
    w = world(task)
    prompts = w.eval_prompts() + w.train_prompts(200)
    levels = set()
    for p in prompts:
        a, b = map(int, key(p).split("+"))
        level = int(p.tags[1].removeprefix("level:"))
        levels.add(level)
        assert len(str(a)) == len(str(b)) == level and p.tags[0] == f"task:{task}"
        assert p.text == visual_world.QUESTIONS[task] and p.answer == str(a + b)
        assert p.meta == {"trace": format_trace(_add_trace(a, b), a + b), "direct": f"A: {a + b}"}
        picture = image(p)
        if task == "add_img":
            assert picture.size == (224, 56)
            assert (read(picture, 0, 28), read(picture, 28, 56)) == (str(a), str(b))
        else:
            assert picture.size == (308, 28)
            assert read(picture, 0, 28) == f"{a}+{b}"
    assert levels == set(range(LEVELS[task][0], LEVELS[task][1] + 1))


def test_count_prompts_show_as_many_squares_as_the_trace_counts():
    w = world("count_img")
    prompts = w.eval_prompts() + w.train_prompts(200)
    for p in prompts:
        red, blue, difference = p.meta["trace"].splitlines()[:3]
        red, blue = int(red.removeprefix("red ")), int(blue.removeprefix("blue "))
        level = int(p.tags[1].removeprefix("level:"))
        assert level <= red <= 2 * level and 1 <= blue <= red
        assert difference == f"{red}-{blue}={red - blue}" and p.answer == str(red - blue)
        assert p.meta["trace"].endswith(f"\nA: {red - blue}") and p.text == visual_world.QUESTIONS["count_img"]
        assert squares(image(p)) == {RED: [256] * red, BLUE: [256] * blue}
        assert key(p).count("R") == red and key(p).count("B") == blue


def test_every_prompt_carries_one_png_image_and_text_tasks_none():
    w = World(WorldConfig(tasks=["add_img", "count_img", "text_img", "add"], min_level=2, max_level=3))
    prompts = w.train_prompts(100)
    tasks = {p.tags[0] for p in prompts}
    assert tasks == {"task:add_img", "task:count_img", "task:text_img", "task:add"}
    for p in prompts:
        if p.tags[0] == "task:add":
            assert p.images == [] and p.text == key(p)
        else:
            assert len(p.images) == 1 and p.images[0].startswith(b"\x89PNG\r\n\x1a\n")


def test_rendering_is_deterministic():
    config = WorldConfig(tasks=["add_img", "count_img", "text_img"], min_level=1, max_level=4, seed=3)
    first, second = World(config).train_prompts(60), World(config).train_prompts(60)
    assert [(p.id, p.images) for p in first] == [(p.id, p.images) for p in second]
    for p in first:  # the image is a function of the problem alone
        assert p.images == [visual_world.render(p.tags[0].removeprefix("task:"), key(p))]
    assert len({p.images[0] for p in first}) == len({p.id for p in first})  # distinct problems, distinct images


def test_train_and_eval_are_disjoint_across_modalities():
    config = WorldConfig(tasks=["add_img", "count_img", "text_img"], min_level=1, max_level=3, eval_size=60)
    w = World(config)
    held_out, train = w.eval_prompts(), w.train_prompts(3000)
    assert len({p.id for p in held_out}) == 60
    assert all(is_held_out(key(p)) for p in held_out) and not any(is_held_out(key(p)) for p in train)
    assert not {p.id for p in held_out} & {p.id for p in train}
    # one problem, one split, whatever shows it: `add`, `add_img` and `text_img` hold out the same sums
    sums = [[key(p) for p in World(WorldConfig(tasks=[task], eval_size=30)).eval_prompts()]
            for task in ("add", "add_img", "text_img")]
    assert sums[0] == sums[1] == sums[2] and len(set(sums[0])) == 30


@pytest.mark.parametrize("task", ["add_img", "count_img", "text_img"])
def test_the_world_reward_checks_visual_answers(task):
    prompts = world(task, eval_size=20).eval_prompts()
    reward = get_reward("world")
    assert [r.score for r in reward(prompts, [p.meta["trace"] for p in prompts])] == [1.0] * 20
    assert [r.score for r in reward(prompts, [p.meta["direct"] for p in prompts])] == [1.0] * 20
    wrong = [re.sub(r"A: (\d+)$", lambda m: f"A: {int(m[1]) + 1}", p.meta["trace"]) for p in prompts]
    results = reward(prompts, wrong)
    assert [(r.score, r.info["reason"]) for r in results] == [(0.0, "wrong")] * 20


def test_verbose_count_traces_verify_the_subtraction():
    prompts = world("count_img", trace_style="verbose", eval_size=40).eval_prompts()
    verifies = [line for p in prompts for line in p.meta["trace"].splitlines() if line.startswith("verify ")]
    assert verifies  # some rates are high enough to verify
    for line in verifies:
        red, blue, answer = map(int, re.fullmatch(r"verify (\d+)-(\d+)=(\d+) ok", line).groups())
        assert red - blue == answer


def test_levels_past_what_fits_are_a_config_error():
    for task, (_, high) in LEVELS.items():
        with pytest.raises(ConfigError, match=rf"world: {task} runs to level {high} .* lower world.max_level"):
            make_problem(task, high + 1, random.Random(0))
    widest = visual_world.render_numbers("8" * 8, "0" * 8)  # the widest numbers are not clipped
    assert (read(widest, 0, 28), read(widest, 28, 56)) == ("8" * 8, "0" * 8)
    assert read(visual_world.render_text("9" * 5 + "+" + "1" * 5), 0, 28) == "99999+11111"
    with pytest.raises(ValueError, match="does not fit a line of 8 cells"):
        visual_world.render_numbers("1" * 9, "1")


def test_a_run_config_picks_visual_tasks():
    config = WorldConfig(tasks=["count_img", "text_img"], min_level=1, max_level=2)
    prompts = load_source("world?size=10", world=config)
    assert len(prompts) == 10 and all(len(p.images) == 1 for p in prompts)
    with pytest.raises(ConfigError, match=r"unknown task 'add_image'; did you mean 'add_img'\?"):
        WorldConfig(tasks=["add_image"])
