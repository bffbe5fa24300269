"""Images in prompts: one way to open them, and errors that name what is wrong.

A prompt's images may be given as a file path (relative paths are resolved against the data
file's folder by the loaders), raw encoded bytes, a `{"bytes": ..., "path": ...}` cell as the
`datasets` Image feature stores it, or a PIL image. `load_image` turns any of them into an RGB
PIL image; Pillow does the decoding.

Protects against: a missing file, a file or bytes Pillow cannot read, a truncated image, and an
image too large for a vision encoder (checked from the header, before the pixels are decoded, so
a decompression bomb is refused unread). Does not protect against: an image that decodes but
shows the wrong thing.
"""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Any

from longrl.errors import DataError, MissingExtraError

MAX_PIXELS = 64_000_000  # a larger image is refused: it would not fit a vision encoder's budget anyway


def pillow():
    """The `PIL` package, or a `MissingExtraError` saying how to install it."""
    try:
        import PIL.Image  # noqa: F401  (loads the submodules used below)
        import PIL.ImageDraw  # noqa: F401
        import PIL.ImageFont  # noqa: F401
    except ImportError:
        raise MissingExtraError("images need Pillow, which is not installed: pip install 'longrl[vision]'") from None
    import PIL

    return PIL


def _describe(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        return f"{len(value)} bytes"
    return repr(value)[:80]


def _check_size(image, what: str, max_pixels: int) -> None:
    if image.width * image.height > max_pixels:
        raise DataError(f"{what} is {image.width}x{image.height} pixels, more than the {max_pixels} allowed: "
                        "resize it")


def _decode(source, what: str, max_pixels: int):
    """The image in `source` (a path or a file object), decoded; `what` names it in errors."""
    Image = pillow().Image

    try:
        opened = Image.open(source)
    except Image.UnidentifiedImageError:
        raise DataError(f"{what} is not in an image format Pillow reads") from None
    except Image.DecompressionBombError as exc:  # Pillow's own limit, above ours by default
        raise DataError(f"{what} is too large to open ({exc})") from None
    except OSError as exc:
        raise DataError(f"{what} is not a readable image ({exc})") from None
    with opened:
        _check_size(opened, what, max_pixels)  # from the header: nothing decoded yet
        try:
            opened.load()
        except (OSError, ValueError) as exc:  # truncated data, a corrupt chunk
            raise DataError(f"{what} is not a readable image ({exc})") from None
        return opened.copy()


def load_image(value: Any, where: str = "", base: str | Path | None = None, max_pixels: int = MAX_PIXELS):
    """`value` as an RGB `PIL.Image.Image`; `DataError` naming `where` if it cannot be one.

    `base` is the folder that relative paths are read from (the data file's folder).
    """
    Image = pillow().Image

    prefix = f"{where}: " if where else ""
    if isinstance(value, dict):  # a datasets Image cell: bytes win over path when both are set
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        image = value
        _check_size(image, f"{prefix}image", max_pixels)
    elif isinstance(value, (bytes, bytearray)):
        image = _decode(io.BytesIO(value), f"{prefix}image of {_describe(value)}", max_pixels)
    elif isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_absolute() and base is not None:
            path = Path(base) / path
        if not path.is_file():
            raise DataError(f"{prefix}image file {str(path)!r} does not exist")
        image = _decode(path, f"{prefix}image file {str(path)!r}", max_pixels)
    else:
        raise DataError(f"{prefix}an image must be a file path, bytes, a {{'bytes', 'path'}} object or a PIL "
                        f"image, got {type(value).__name__} {_describe(value)}")
    return image.convert("RGB") if image.mode != "RGB" else image


def row_images(column: str, value: Any, base: str | Path | None = None) -> list[Any]:
    """A data row's images (one value or a list), each opened once to check it; `DataError`
    naming `column` (and the image's place in the list) for the first bad one.

    Returns what a `Prompt` keeps: paths made absolute (relative ones read from `base`, the data's
    folder), bytes as bytes, a `{bytes, path}` cell as whichever it holds; never decoded pixels.
    """
    images = []
    for i, image in enumerate(value if isinstance(value, list) else [value], start=1):
        where = f"field {column!r}, image {i}" if isinstance(value, list) else f"field {column!r}"
        if isinstance(image, dict):  # bytes win over path, as in `load_image`
            image = image.get("bytes") or image.get("path")
        if isinstance(image, str):
            image = os.path.abspath(Path(base or ".", image))  # an absolute `image` stays itself
        elif isinstance(image, bytearray):
            image = bytes(image)
        load_image(image, where)
        images.append(image)
    return images


def undecoded(feature: Any) -> Any:
    """A `datasets` feature (or a dict of them) with every Image in it left undecoded: rows then
    hold `{"bytes", "path"}` cells instead of PIL images."""
    import datasets

    if isinstance(feature, datasets.Image):
        return dataclasses.replace(feature, decode=False)
    if isinstance(feature, dict):  # `Features`, or a struct of features
        return type(feature)({k: undecoded(v) for k, v in feature.items()})
    if isinstance(feature, list):  # the old spelling of a list feature: `[feature]`
        return [undecoded(f) for f in feature]
    if dataclasses.is_dataclass(feature) and hasattr(feature, "feature"):  # List, LargeList
        return dataclasses.replace(feature, feature=undecoded(feature.feature))
    return feature
