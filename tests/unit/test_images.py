"""Images in prompts: `load_image` on every form, and loaders that read, resolve and check them."""

import io
import json

import pytest
from PIL import Image

from longrl.data.images import load_image
from longrl.data.sources import DataError, load_source

RED, GREEN = (255, 0, 0), (0, 255, 0)


def picture(mode="RGB") -> Image.Image:
    """A 3x2 image: green everywhere but a red pixel at (1, 0)."""
    image = Image.new("RGB", (3, 2), GREEN)
    image.putpixel((1, 0), RED)
    return image.convert(mode)


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save(folder, name="pic.png", image=None):
    folder.mkdir(parents=True, exist_ok=True)
    (image or picture()).save(folder / name)
    return folder / name


def pixels(image: Image.Image) -> list:
    return [image.getpixel((x, y)) for y in range(image.height) for x in range(image.width)]


EXPECTED = [GREEN, RED, GREEN, GREEN, GREEN, GREEN]


# -- load_image ----------------------------------------------------------------------------------


def test_load_image_from_path_bytes_dict_and_pil(tmp_path):
    path = save(tmp_path)
    data = png_bytes(picture())
    for value in (path, str(path), data, bytearray(data), {"bytes": data, "path": None},
                  {"bytes": None, "path": str(path)}, picture()):
        image = load_image(value)
        assert (image.mode, image.size) == ("RGB", (3, 2)) and pixels(image) == EXPECTED
    assert pixels(load_image("pic.png", base=tmp_path)) == EXPECTED  # relative to the data folder
    assert pixels(load_image({"bytes": data, "path": "elsewhere.png"})) == EXPECTED  # bytes win
    palette = load_image(png_bytes(picture("P")))  # any mode comes back as RGB
    assert palette.mode == "RGB" and pixels(palette) == EXPECTED


def test_load_image_errors_name_where(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(DataError) as err:
        load_image(missing, "q.jsonl, line 3")
    assert str(err.value) == f"q.jsonl, line 3: image file '{missing}' does not exist"
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(DataError) as err:
        load_image(text, "row 2")
    assert str(err.value) == f"row 2: image file '{text}' is not in an image format Pillow reads"
    with pytest.raises(DataError, match=r"^x: image of 5 bytes is not in an image format Pillow reads$"):
        load_image(b"hello", "x")
    truncated = png_bytes(picture())[:-30]
    with pytest.raises(DataError, match=rf"^image of {len(truncated)} bytes is not a readable image"):
        load_image(truncated)
    with pytest.raises(DataError, match=r"^y: an image must be a file path, bytes, a \{'bytes', 'path'\} object "
                                        r"or a PIL image, got int 7$"):
        load_image(7, "y")


def test_load_image_refuses_too_many_pixels(tmp_path):
    path = save(tmp_path)
    for value in (path, png_bytes(picture()), picture()):  # 3 x 2 = 6 pixels
        with pytest.raises(DataError, match=r"is 3x2 pixels, more than the 5 allowed: resize it$"):
            load_image(value, "z", max_pixels=5)
    assert load_image(path, max_pixels=6).size == (3, 2)


# -- loaders -------------------------------------------------------------------------------------


def jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_jsonl_images_resolve_against_the_file_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    save(data / "img", "a.png")
    save(data / "img", "b.png")
    absolute = save(tmp_path / "elsewhere", "c.png")
    path = jsonl(data / "q.jsonl", [
        {"text": "1+1", "answer": "2", "images": ["img/a.png", "img/b.png"]},
        {"text": "2+2", "answer": "4", "image": "img/a.png"},  # one value, the `image` alias
        {"text": "3+3", "answer": "6", "images": [str(absolute)]},
        {"text": "4+4", "answer": "8"},
    ])
    monkeypatch.chdir(tmp_path)  # the working directory is not the data folder
    two, one, far, none = load_source("jsonl:data/q.jsonl")
    assert two.images == [str(data / "img" / "a.png"), str(data / "img" / "b.png")]
    assert one.images == [str(data / "img" / "a.png")] and one.meta == {}
    assert far.images == [str(absolute)] and none.images == []
    (mapped,) = load_source(f"{jsonl(data / 'm.jsonl', [{'q': '1', 'answer': '1', 'pic': 'img/b.png'}])}"
                            "?text=q&images=pic")
    assert mapped.images == [str(data / "img" / "b.png")]


def test_jsonl_image_errors_name_file_line_and_field(tmp_path, capsys):
    save(tmp_path, "ok.png")
    (tmp_path / "notes.txt").write_text("hello")
    path = jsonl(tmp_path / "q.jsonl", [
        {"text": "1+1", "answer": "2", "images": ["ok.png"]},
        {"text": "2+2", "answer": "4", "images": ["ok.png", "gone.png"]},
        {"text": "3+3", "answer": "6", "image": "notes.txt"},
        {"text": "4+4", "answer": "8", "images": [3]},
    ])
    with pytest.raises(DataError) as err:
        load_source(str(path))
    assert str(err.value) == (f"{path}, line 2: field 'images', image 2: image file "
                              f"'{tmp_path / 'gone.png'}' does not exist")
    prompts = load_source(str(path), on_error="skip")
    assert [p.text for p in prompts] == ["1+1"]
    assert capsys.readouterr().err.splitlines() == [
        f"skipping: {path}, line 2: field 'images', image 2: image file '{tmp_path / 'gone.png'}' does not exist",
        (f"skipping: {path}, line 3: field 'image': image file '{tmp_path / 'notes.txt'}' is not in an "
         "image format Pillow reads"),
        (f"skipping: {path}, line 4: field 'images', image 1: an image must be a file path, bytes, a "
         "{'bytes', 'path'} object or a PIL image, got int 3"),
        f"{path}: skipped 3 malformed row(s), kept 1",
    ]


def test_a_too_large_image_is_refused_unread(tmp_path):
    Image.new("1", (8001, 8000)).save(tmp_path / "big.png")  # 64,008,000 pixels > 64,000,000
    path = jsonl(tmp_path / "q.jsonl", [{"text": "1+1", "answer": "2", "image": "big.png"}])
    with pytest.raises(DataError) as err:
        load_source(str(path))
    assert str(err.value) == (f"{path}, line 1: field 'image': image file '{tmp_path / 'big.png'}' is "
                              "8001x8000 pixels, more than the 64000000 allowed: resize it")


def test_csv_image_cells(tmp_path):
    save(tmp_path / "img", "a.png")
    save(tmp_path / "img", "b.png")
    path = tmp_path / "q.csv"
    path.write_text('text,answer,images\n1+1,2,img/a.png\n2+2,4,"[""img/a.png"", ""img/b.png""]"\n3+3,6,\n'
                    "4+4,8,img/c.png\n")
    with pytest.raises(DataError) as err:
        load_source(str(path))
    assert str(err.value) == f"{path}, line 5: field 'images': image file '{tmp_path / 'img' / 'c.png'}' does not exist"
    one, two, none = load_source(str(path), on_error="skip")
    assert one.images == [str(tmp_path / "img" / "a.png")]
    assert two.images == [str(tmp_path / "img" / "a.png"), str(tmp_path / "img" / "b.png")]
    assert none.images == []
    path.write_text('text,answer,images\n1+1,2,"[""img/a.png"""\n')
    with pytest.raises(DataError, match=r"q.csv, line 2: field 'images' must hold JSON in a CSV cell"):
        load_source(str(path))


def image_dataset(tmp_path):
    import datasets

    data = png_bytes(picture())
    save(tmp_path, "pic.png")
    features = datasets.Features({"question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "images": datasets.List(datasets.Image())})
    rows = {"question": ["1+1", "2+2"], "answer": ["2", "4"],
            "images": [[{"bytes": data, "path": None}], [str(tmp_path / "pic.png"), {"bytes": data, "path": None}]]}
    return datasets.Dataset.from_dict(rows, features=features), data


def test_parquet_with_an_image_feature_keeps_bytes(tmp_path):
    dataset, data = image_dataset(tmp_path)
    dataset.to_parquet(str(tmp_path / "q.parquet"))
    one, two = load_source(f"parquet:{tmp_path / 'q.parquet'}")
    # a `{bytes, path}` cell keeps its bytes; one without bytes (`to_parquet` did not embed the
    # file) keeps its path; never a decoded image
    assert one.images == [data] and two.images == [str(tmp_path / "pic.png"), data]
    assert pixels(load_image(two.images[0])) == EXPECTED


def test_parquet_paths_resolve_against_its_folder(tmp_path):
    import pandas as pd

    save(tmp_path / "img", "a.png")
    pd.DataFrame([{"text": "1+1", "answer": "2", "images": ["img/a.png"]},
                  {"text": "2+2", "answer": "4", "images": ["img/zz.png"]}]).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(DataError) as err:
        load_source(str(tmp_path / "q.parquet"))
    assert str(err.value) == (f"{tmp_path / 'q.parquet'}, row 2: field 'images', image 1: image file "
                              f"'{tmp_path / 'img' / 'zz.png'}' does not exist")
    (one,) = load_source(str(tmp_path / "q.parquet"), on_error="skip")
    assert one.images == [str(tmp_path / "img" / "a.png")]


def test_hf_saved_dataset_with_an_image_feature(tmp_path):
    dataset, data = image_dataset(tmp_path)
    dataset.save_to_disk(str(tmp_path / "saved"))
    one, two = load_source(f"hf:{tmp_path / 'saved'}")
    assert (one.id, one.text, one.images) == ("saved:1", "1+1", [data])
    assert all(isinstance(image, bytes) for image in two.images) and len(two.images) == 2
    assert [pixels(load_image(image)) for image in two.images] == [EXPECTED, EXPECTED]


def test_hf_data_directory_paths_resolve_against_it(tmp_path):
    folder = tmp_path / "raw"
    save(folder, "a.png")
    jsonl(folder / "train.jsonl", [{"text": "1+1", "answer": "2", "image": "a.png"},
                                   {"text": "2+2", "answer": "4", "image": "b.png"}])
    with pytest.raises(DataError) as err:
        load_source(f"hf:{folder}")
    assert str(err.value) == f"{folder} [train], row 2: field 'image': image file '{folder / 'b.png'}' does not exist"
    (one,) = load_source(f"hf:{folder}", on_error="skip")
    assert one.images == [str(folder / "a.png")]


# -- chat messages with image parts --------------------------------------------------------------


def test_messages_with_image_parts(tmp_path):
    save(tmp_path, "a.png")
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is shown?"},
                                         {"type": "text", "text": "One word."}]}]
    path = jsonl(tmp_path / "q.jsonl", [{"messages": chat, "answer": "red", "images": ["a.png"]}])
    (prompt,) = load_source(str(path))
    assert prompt.messages == chat and prompt.text == "What is shown?\nOne word."
    assert prompt.images == [str(tmp_path / "a.png")]


@pytest.mark.parametrize("row, message", [
    ({"messages": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}], "answer": "1"},
     "field 'messages' has 1 image part(s) but the row has 0 image(s) (column 'images'): give one image per image part"),
    ({"messages": [{"role": "user", "content": [{"type": "image"}]}], "answer": "1", "image": ["a.png", "a.png"]},
     "field 'messages' has 1 image part(s) but the row has 2 image(s) (column 'image'): give one image per image part"),
    ({"messages": [{"role": "user", "content": [{"type": "video"}]}], "answer": "1"},
     "field 'messages', message 1: a content part must be {'type': 'text', 'text': str} or {'type': 'image'}, "
     'got {"type": "video"}'),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}], "answer": "1"},
     "field 'messages', message 1: a content part must be {'type': 'text', 'text': str} or {'type': 'image'}, "
     'got {"type": "text", "text": 5}'),
    ({"messages": [{"role": "user", "content": 5}], "answer": "1"},
     "field 'messages', message 1: must be an object with string 'role' and 'content', got "
     '{"role": "user", "content": 5}'),
])
def test_bad_image_parts_are_named(tmp_path, row, message):
    save(tmp_path, "a.png")
    path = jsonl(tmp_path / "q.jsonl", [row])
    with pytest.raises(DataError) as err:
        load_source(str(path))
    assert str(err.value) == f"{path}, line 1: {message}"
