"""Finding and decoding images robustly: every kind of bad file becomes an `ImageError` with a reason.

Grayscale, CMYK, palette, alpha and 16-bit images become 8-bit RGB; EXIF orientation is applied;
decompression bombs are refused. JPEGs can be decoded at reduced size (libjpeg's DCT scaling) when the
caller only needs a smallest side of `min_side` pixels, which makes decoding several times cheaper.
`load_rgb_tensor` is the training loaders' decoder: the same pixels as `load_rgb`, as a uint8 tensor.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from vggfeat.errors import InputError, VggfeatError
from vggfeat.utils.files import NotRegularFileError, file_kind, open_regular

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
log = logging.getLogger(__name__)
MAX_PIXELS = 178_956_970  # twice PIL's warning threshold, PIL's own hard limit; larger is a bomb


class ImageError(VggfeatError):
    """An input that cannot be used as an image; `reason` says why in a few words."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files, folders (searched recursively, sorted) and `@list.txt` files into image paths.

    A named file is taken whatever its extension (a bad one is reported when it is decoded); folders
    contribute files with image extensions. A missing path is a FileNotFoundError naming it (and, for a
    list file, the line).
    """
    return [Path(p) for p in iter_images(inputs)]


def iter_images(inputs: Iterable[str | Path]) -> Iterator[str]:
    """`find_images` one path at a time, as str: a folder of millions of images is walked, never held."""
    for item in inputs:
        item = str(item)
        if item.startswith("@"):
            yield from _iter_list_images(item[1:])
            continue
        path = Path(item)
        if path.is_dir():
            yield from iter_folder_images(path)
        elif path.is_file():
            yield str(path)
        elif path.exists():  # a FIFO or a device: never opened (a read would wait for a writer)
            raise InputError(f"{path} is {file_kind(path.stat().st_mode)}, not an image file or folder")
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")


def iter_folder_images(folder: Path) -> Iterator[str]:
    """Image files under `folder` in sorted path order, one at a time, following symlinked subfolders (a user's
    photos are often linked in from elsewhere); a folder reached twice (a link back up the tree, a cycle) is
    searched once. Each folder's entries are sorted by name and subfolders are entered where their name sorts,
    which is the order of sorting all the paths; only a symlink costs a stat (file kinds come with the listing)."""
    seen: set[tuple[int, int]] = set()

    def visit(folder: str) -> Iterator[str]:
        try:
            st = os.stat(folder)
        except OSError:  # unreadable: left out, as os.walk leaves it
            return
        if (st.st_dev, st.st_ino) in seen:  # a cycle or a second link to one folder: its files are in already
            log.warning("%s: already searched (a symlink back into the tree); not searched again", folder)
            return
        seen.add((st.st_dev, st.st_ino))
        try:  # a folder's names and kinds only (not its DirEntry objects): its memory while its files are walked
            with os.scandir(folder) as listing:
                entries = sorted((e.name, *_kind(e)) for e in listing)
        except OSError:
            return
        for name, is_dir, is_file in entries:
            path = os.path.join(folder, name)
            if is_dir:
                yield from visit(path)
            elif is_file and is_image_file(Path(name)):
                yield str(Path(path))

    yield from visit(str(folder))


def _kind(entry: os.DirEntry) -> tuple[bool, bool]:
    """(a folder, a regular file), symlinks followed; neither when it cannot be told (a broken link)."""
    try:
        return entry.is_dir(), entry.is_file()
    except OSError:
        return False, False


def find_input_images(inputs: Iterable[str | Path]) -> list[Path]:
    """`find_images`, and an InputError naming the inputs when they hold no image at all. Light (no torch), so
    a command checks its inputs before loading its nets."""
    names = [str(i) for i in inputs]
    found = find_images(names)
    if not found:
        raise no_images_error(names)
    return found


def no_images_error(names: Sequence[str]) -> InputError:
    return InputError(
        f"no input images found in {', '.join(names) or 'the arguments'} (image files: "
        f"{', '.join(sorted(IMAGE_EXTENSIONS))}; folders are searched recursively)"
    )


class ListEntry(NamedTuple):  # a tuple: one is made per listed line, 10^8 of them for a corpus
    """One path of an @list: the byte `offset` of its physical line, its `place` among that line's entries (a
    lone CR cuts a line further, as str.splitlines does), its 1-based `lineno` counted from where the reading
    began, the line as written, and the path it names (a relative one taken from the list's folder)."""

    offset: int
    place: int
    lineno: int
    line: str
    path: Path


def iter_list(list_file: str | Path, offset: int = 0, skip: int = 0) -> Iterator[ListEntry]:
    """The entries of an @list from byte `offset` on (the first `skip` entries of that line left out), one line
    at a time, blank lines and # comments left out. A list that is missing, not a regular file (a FIFO is never
    waited on) or not UTF-8 is an error naming it."""
    parent = Path(list_file).parent
    try:
        f = open_regular(list_file)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such list file: {list_file}") from None
    except NotRegularFileError as e:
        raise InputError(f"list file {e}; put the file itself there") from None
    except OSError as e:
        raise InputError(f"list file {list_file} is unreadable ({e.strerror or e})") from None
    lineno = 0
    with f:
        f.seek(offset)
        for raw in f:  # physical lines, cut at b"\n": a multi-byte UTF-8 character never holds that byte
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise InputError(
                    f"{list_file}: not a text file (byte {offset + e.start} is not UTF-8); an @list holds one "
                    "image path per line"
                ) from None
            for k, line in enumerate(text.splitlines()):
                lineno += 1
                line = line.strip()
                if k >= skip and line and not line.startswith("#"):
                    yield ListEntry(offset, k, lineno, line, Path(line) if os.path.isabs(line) else parent / line)
            offset += len(raw)
            skip = 0


def listed_kind(list_file: str | Path, entry: ListEntry) -> int:
    """The st_mode of a listed path: a missing one is a FileNotFoundError naming the list and line, a FIFO or a
    device an InputError (refused before any decoder, CPU or GPU, could open it)."""
    try:
        mode = os.stat(entry.path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{list_file}, line {entry.lineno}: no such file {entry.line!r}") from None
    except OSError as e:
        raise InputError(f"{list_file}, line {entry.lineno}: {entry.path} is unreadable ({e.strerror or e})") from None
    if not stat.S_ISDIR(mode) and not stat.S_ISREG(mode):
        raise InputError(
            f"{list_file}, line {entry.lineno}: {entry.path} is {file_kind(mode)}, not an image file or folder"
        )
    return mode


def _iter_list_images(list_file: str) -> Iterator[str]:
    """An @list's image paths: its files, and the images of the folders it names."""
    for entry in iter_list(list_file):
        if stat.S_ISDIR(listed_kind(list_file, entry)):
            yield from iter_folder_images(entry.path)
        else:
            yield str(entry.path)


def _draft_request(size: tuple[int, int], min_side: int) -> tuple[int, int]:
    """The (w, h) to ask JPEG draft mode for so that the decoded smallest side stays >= min_side."""
    w, h = size
    scale = min_side / min(w, h)
    return (max(1, int(np.ceil(w * scale))), max(1, int(np.ceil(h * scale))))


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer or float grayscale -> 8-bit 'L', scaled by the type's range."""
    arr = np.asarray(img)
    if img.mode == "F":
        arr = np.clip(arr, 0.0, 1.0) * 255.0 if arr.max(initial=0) <= 1.0 else np.clip(arr, 0, 255)
    else:  # 'I', 'I;16*': PNG and TIFF store up to 16 bits per sample
        arr = arr.astype(np.float64) * (255.0 / 65535.0)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")


MAX_SCALED_PIXELS = 2**24  # 16.8 M pixels (4096 x 4096) per rescaled image: far above any photo at Q <= 1024


def check_scaled_pixels(
    height: int, width: int, q: int, path: str | Path | object, max_pixels: int = MAX_SCALED_PIXELS
) -> None:
    """Refuse, before resizing, an image whose rescale to smallest side Q exceeds the pixel budget (a 2000 x 1
    strip at Q = 512 would become 512 x 1,024,000); like the decompression-bomb check, it is skipped with a reason."""
    short, long = min(height, width), max(height, width)
    scaled_long = max(q, round(long * q / short))
    if q * scaled_long > max_pixels:
        where = path if isinstance(path, (str, Path)) else "<array input>"
        raise ImageError(
            where,
            f"too large after rescaling ({width}x{height} at Q = {q} would be {q}x{scaled_long:,} "
            f"= {q * scaled_long:,} pixels > {max_pixels:,})",
        )


def load_rgb(path: str | Path, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file to 8-bit RGB, EXIF orientation applied; raise ImageError on a bad file.

    With `min_side`, a JPEG may be decoded at 1/2, 1/4 or 1/8 size as long as its smallest side stays at
    least `min_side` (the caller rescales afterwards anyway).
    """
    path = Path(path)
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the decoder until a writer comes
            raise ImageError(path, f"{file_kind(st.st_mode)}, not a regular file")
        if st.st_size == 0:
            raise ImageError(path, "empty file (0 bytes)")
    except OSError as e:
        raise ImageError(path, f"unreadable ({e.strerror or e})") from e
    return _open_rgb(path, path, min_side, max_pixels)


@dataclass(frozen=True)
class EncodedImage:
    """An image file's bytes held in memory (a tar shard's member), decoded where it is used, by `decode_rgb`."""

    data: bytes
    name: str  # what errors call it, e.g. shards/000000.tar#key.jpg


def decode_rgb(data: bytes, name: str, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """`load_rgb` of an image held in memory (a tar shard's member); `name` is what errors call it."""
    if not data:
        raise ImageError(name, "empty file (0 bytes)")
    return _open_rgb(io.BytesIO(data), name, min_side, max_pixels)


def _open_rgb(source: Path | io.BytesIO, path: str | Path, min_side: int | None, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(source)
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(path, f"decompression bomb refused ({w}x{h} = {w * h:,} pixels > {max_pixels:,})")
            if min_side is not None and img.format == "JPEG" and min(w, h) > min_side:
                img.draft("RGB", _draft_request((w, h), min_side))
            img.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(path, f"decompression bomb refused ({e})") from e
    except PermissionError as e:
        raise ImageError(path, "unreadable (permission denied)") from e
    except Image.UnidentifiedImageError as e:
        raise ImageError(path, "not an image (unrecognised format)") from e
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports truncation and corruption as these
        raise ImageError(path, f"truncated or corrupt image ({e})") from e
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not lose an otherwise fine image
        pass
    return to_rgb(img)


def _draft_reduces(size: tuple[int, int], min_side: int | None) -> bool:
    """Whether JPEG draft mode would decode at 1/2 size or less for this `min_side` (PIL's own rule)."""
    if min_side is None or min(size) <= min_side:
        return False
    req = _draft_request(size, min_side)
    return min(size[0] // req[0], size[1] // req[1]) >= 2


@functools.lru_cache(maxsize=1)
def _torchvision_io() -> ModuleType | None:
    """torchvision.io if it still decodes JPEGs, else None: torchvision 0.29 deprecated its image decoders
    (in favour of TorchCodec) and a later release drops them, after which PIL decodes everything."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import torchvision.io as tvio
    except ImportError:
        return None
    return tvio if hasattr(tvio, "decode_jpeg") else None


def load_rgb_tensor(path: str | Path, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """`load_rgb` as a (3, H, W) uint8 tensor (its memory in (H, W, 3) order, i.e. channels_last).

    The common training input - an RGB or grayscale JPEG that DCT scaling cannot shrink (an ImageNet
    500 x 375 photo at S <= 375) - is decoded by torchvision's libjpeg-turbo straight into the tensor:
    the same pixels as PIL (both are libjpeg-turbo with the same settings) without PIL's file reads in
    chunks and 4-byte-per-pixel internal image, about 20% faster. Anything else, and any file that
    decoder refuses, goes through `load_rgb`, which also names what is wrong with a bad file.
    """
    path = Path(path)
    return _rgb_tensor(
        path, path.read_bytes, lambda: load_rgb(path, min_side=min_side, max_pixels=max_pixels), min_side, max_pixels
    )


def decode_rgb_tensor(
    data: bytes, name: str, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """`load_rgb_tensor` of an image held in memory (a tar shard's member); `name` is what errors call it."""
    return _rgb_tensor(
        io.BytesIO(data),
        lambda: data,
        lambda: decode_rgb(data, name, min_side=min_side, max_pixels=max_pixels),
        min_side,
        max_pixels,
    )


def _rgb_tensor(
    source: Path | io.BytesIO,
    read: Callable[[], bytes],
    fallback: Callable[[], Image.Image],
    min_side: int | None,
    max_pixels: int,
) -> torch.Tensor:
    import torch

    tvio = _torchvision_io()
    try:
        with Image.open(source) as header:  # reads the header only
            fast = (
                tvio is not None
                and header.format == "JPEG"
                and header.mode in ("RGB", "L")
                and header.width * header.height <= max_pixels
                and not _draft_reduces(header.size, min_side)
            )
    except Exception:  # the fallback below classifies the problem
        fast = False
    if fast:
        assert tvio is not None  # fast needs it
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                data = torch.frombuffer(bytearray(read()), dtype=torch.uint8)
                return tvio.decode_jpeg(data, mode=tvio.ImageReadMode.RGB, apply_exif_orientation=True)
        except (OSError, RuntimeError):  # truncated or corrupt (PIL may still read a corrupt one)
            pass
    arr = np.array(fallback(), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparent pixels are composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I", "F") or img.mode.startswith("I;"):
        return _to_8bit(img).convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
