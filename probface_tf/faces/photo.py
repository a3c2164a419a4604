"""A photo from a path, encoded bytes or an array, as RGB uint8 [H, W, 3]; every failure names the photo.

Pillow decodes (it reads grey, palette, alpha and CMYK JPEGs and applies the EXIF orientation a phone writes);
a truncated file is an error, not a silently grey-padded image.
"""
from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image, ImageOps

# A photo larger than this is refused before decoding (Pillow's decompression-bomb guard, set explicitly).
MAX_PIXELS = 100_000_000
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class PhotoError(ValueError):
    """A photo that cannot be read; the message names it and says why."""


def _decode(data: bytes, name: str) -> np.ndarray:
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = MAX_PIXELS
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # decode now: a truncated file raises here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img.convert("RGBA"))  # transparent -> white, not black
            return np.asarray(img.convert("RGB"))
    except Image.DecompressionBombError:
        raise PhotoError(f"{name}: image too large (more than {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        what = "truncated" if "truncated" in str(exc) else "not a readable image"
        raise PhotoError(f"{name}: {what} ({exc})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _from_array(image, name: str) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4) or min(array.shape[:2]) < 1:
        raise PhotoError(f"{name}: a photo array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], "
                         f"got shape {list(array.shape)}")
    if array.dtype != np.uint8:
        if array.dtype.kind != "f" or not np.all(np.isfinite(array)):
            raise PhotoError(f"{name}: a photo array must be uint8 or finite floats in [0, 255], got {array.dtype}")
        array = np.clip(np.round(array), 0, 255).astype(np.uint8)
    if array.shape[2] == 1:
        array = np.repeat(array, 3, 2)
    return np.ascontiguousarray(array[..., :3])


def read_photo(photo, name: str | None = None) -> np.ndarray:
    """``photo``: a file path, encoded bytes, or an array ([H, W] grey, [H, W, 3] RGB, [H, W, 4] RGBA)."""
    if isinstance(photo, (str, os.PathLike)):
        name = name or str(photo)
        try:
            with open(photo, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise PhotoError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if not data:
            raise PhotoError(f"{name}: empty file")
        return _decode(data, name)
    if isinstance(photo, (bytes, bytearray)):
        return _decode(bytes(photo), name or "<bytes>")
    return _from_array(photo, name or "<array>")
