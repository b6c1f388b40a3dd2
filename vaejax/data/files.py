"""Raw data files: finding them, telling their format from their bytes, reading them safely.

Every check raises one clear error: FileNotFoundError for a file that is not
there, ValueError for a file that is not what it should be; the message names
the full path and says what was expected.

Formats are told by their first bytes, never by the file name (a browser that
un-gzips a download keeps the ``.gz``; any file can be named ``x.npz``):

* zip (npz): ``PK\\x03\\x04``, or ``PK\\x05\\x06`` for an empty archive;
* gzip: ``\\x1f\\x8b``;
* a single ``.npy`` array: ``\\x93NUMPY``; HDF5: ``\\x89HDF``.

Data files are data: nothing here unpickles or evaluates what a file holds (npz
members are read with ``allow_pickle=False``; an object array is an error), and a
size a file announces (an npy header, a zip directory, an IDX header) is checked
against the bytes the file can hold *before* anything of that size is allocated.
Deflate (zip, gzip) expands at most :data:`MAX_DEFLATE_RATIO` times, which bounds
what a compressed file can honestly contain.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
# Deflate codes a 258-byte match in at least 2 bits: at most 1032 output bytes per input
# byte (zlib's technical notes). A file announcing more cannot hold it.
MAX_DEFLATE_RATIO = 1032
_SMALL = 1 << 16  # slack for tiny members, whose few bytes of framing skew the ratio
_GZIP_ERRORS = (EOFError, OSError, zlib.error)
_SIGNATURES = (
    (b"\x93NUMPY", "a single .npy array"),
    (GZIP_MAGIC, "gzip-compressed data"),
    (b"\x89HDF", "an HDF5 file"),
    (b"PK", "a zip archive"),
)
_TEXT_BYTES = frozenset(range(32, 127)) | frozenset(b"\t\n\r")
_CHUNK = 1 << 20


def shared_data_dir() -> Path:
  """``$VAEJAX_DATA_DIR``, else the project's ``<repo root>/../shared/data``."""
  env = os.environ.get("VAEJAX_DATA_DIR")
  return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def head(path: Path, size: int = 8) -> bytes:
  """The first ``size`` bytes of the file at ``path``."""
  with open(path, "rb") as f:
    return f.read(size)


def describe(magic: bytes) -> str:
  """What a file's first bytes say it is, for error messages.

  >>> describe(b"<html>No")
  'plain text'
  >>> describe(b"PK\\x03\\x04\\x14\\x00\\x00\\x00")
  'a zip archive'
  """
  if not magic:
    return "an empty file"
  for signature, kind in _SIGNATURES:
    if magic.startswith(signature):
      return kind
  if set(magic) <= _TEXT_BYTES:
    return "plain text"
  return "unknown binary data"


def require_file(path: Path, what: str, how: str) -> Path:
  """``path`` if it is a file; else FileNotFoundError (absent) or ValueError (a directory).

  Args:
    path: where the caller looks.
    what: the file wanted, for the message ("dSprites file", "MNIST npz").
    how: how to get it, ending the one-line message.
  """
  if path.is_dir():
    raise ValueError(f"path must be the {what} itself; got the directory "
                     f"{path.resolve()}. {how}")
  if not path.is_file():
    raise FileNotFoundError(f"No {what} at {path.resolve()}. {how}")
  return path


def check_npz(path: Path, expected: str) -> None:
  """Raises ValueError unless ``path`` starts like an npz (a zip archive).

  Args:
    path: an existing file.
    expected: what the caller wants instead, ending the one-line message.
  """
  magic = head(path)
  if not magic.startswith(ZIP_MAGICS):
    raise ValueError(f"{path} is not an npz file: it holds {describe(magic)} "
                     f"(first bytes {magic!r}). {expected}")


def find(directory: Path, name: str) -> Path | None:
  """``directory / name`` if it is a file, else ``directory / (name + ".gz")``, else None."""
  for candidate in (directory / name, directory / f"{name}.gz"):
    if candidate.is_file():
      return candidate
  return None


def find_all(path: str | os.PathLike | None, names: Iterable[str], what: str,
             how: str) -> dict[str, Path]:
  """The file found for each of ``names`` (plain or .gz) in the directory ``path``.

  ``path`` None means :func:`shared_data_dir`. A file instead of a directory is a
  ValueError; a missing directory or file a FileNotFoundError naming every path
  looked at.
  """
  names = list(names)
  directory = (Path(path).expanduser() if path is not None else shared_data_dir()).absolute()
  if directory.is_file():
    raise ValueError(f"path must be the directory holding {names}; got the file "
                     f"{directory}. {how}")
  if not directory.is_dir():
    raise FileNotFoundError(
        f"No directory {directory} (looked there for the {what} files {names}). {how}")
  found = {name: find(directory, name) for name in names}
  missing = [f"{directory / name}[.gz]" for name, p in found.items() if p is None]
  if missing:
    raise FileNotFoundError(
        f"Missing {what} files: looked for {', '.join(missing)} (each plain or .gz). {how}")
  return found


# ----------------------------------------------------------------------------- plain or gzip


def is_gzip(path: Path) -> bool:
  return head(path, 2) == GZIP_MAGIC


def max_content_bytes(path: Path) -> int:
  """The most bytes the file can hold: its size, or for gzip the deflate bound of it."""
  size = path.stat().st_size
  return size * MAX_DEFLATE_RATIO + _SMALL if is_gzip(path) else size


@contextlib.contextmanager
def open_binary(path: Path, how: str) -> Iterator[BinaryIO]:
  """The file's contents as a stream, un-gzipped when its bytes start with the gzip magic.

  Reading nothing whole, a caller can check sizes as the data arrives.

  Raises:
    ValueError: truncated or corrupt gzip data, while reading (message ends with ``how``).
  """
  if not is_gzip(path):
    with open(path, "rb") as f:
      yield f
    return
  try:
    with gzip.open(path, "rb") as f:
      yield f
  except _GZIP_ERRORS as e:
    raise ValueError(f"{path} is truncated or corrupt gzip data ({e}). {how}") from e


def read_bytes(path: Path, how: str, max_size: int | None = None) -> bytes:
  """The contents of ``path``, un-gzipped when its bytes start with the gzip magic.

  Args:
    path: the file.
    how: ends the one-line messages (what was expected, how to get it).
    max_size: refuse contents longer than this many bytes (gzip is decompressed
      in chunks, so a small file that expands hugely fails without exhausting
      memory); None for no limit.

  Raises:
    ValueError: truncated or corrupt gzip data, or contents over ``max_size``.
  """
  limit = math.inf if max_size is None else max_size
  chunks, total = [], 0
  with open_binary(path, how) as f:
    while chunk := f.read(_CHUNK):
      total += len(chunk)
      if total > limit:
        raise ValueError(f"{path} holds more than {max_size} bytes, more than any valid file "
                         f"of this kind. {how}")
      chunks.append(chunk)
  return b"".join(chunks)


# ----------------------------------------------------------------------------- npz members


class NpyHeader(NamedTuple):
  """What an npz member's .npy header announces."""

  shape: tuple[int, ...]
  dtype: np.dtype


def _member_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path,
                   how: str) -> NpyHeader:
  """Reads one member's .npy header and checks it against the member's size."""
  where = f"{path}: member {info.filename}"
  with zf.open(info) as f:
    try:
      version = np.lib.format.read_magic(f)
      readers = {(1, 0): np.lib.format.read_array_header_1_0,
                 (2, 0): np.lib.format.read_array_header_2_0}
      if version not in readers:
        raise ValueError(f"npy format version {version} (expected 1.0 or 2.0)")
      shape, _, dtype = readers[version](f)
    except ValueError as e:
      raise ValueError(f"{where} is not a valid .npy array ({e}). {how}") from e
    header_bytes = f.tell()
  if dtype.hasobject:
    raise ValueError(f"{where} holds Python objects (dtype {dtype}); vaejax reads numeric "
                     f"arrays only and never unpickles a data file. {how}")
  announced = math.prod(shape) * dtype.itemsize
  if info.file_size - header_bytes != announced:
    raise ValueError(
        f"{where}: its header announces shape {shape} of {dtype} ({announced} bytes) but "
        f"the member holds {info.file_size - header_bytes} bytes of data. {how}")
  return NpyHeader(tuple(shape), dtype)


def _check_member_size(info: zipfile.ZipInfo, path: Path, archive_bytes: int,
                       how: str) -> None:
  """Checks the zip directory's sizes of one member against the archive's real size."""
  where = f"{path}: member {info.filename}"
  if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
    raise ValueError(f"{where} is compressed with zip method {info.compress_type}; expected "
                     f"stored or deflated members (np.savez, np.savez_compressed). {how}")
  bound = info.compress_size if info.compress_type == zipfile.ZIP_STORED else (
      info.compress_size * MAX_DEFLATE_RATIO + _SMALL)
  if info.header_offset + info.compress_size > archive_bytes or info.file_size > bound:
    raise ValueError(
        f"{where}: the zip directory announces {info.file_size} bytes "
        f"({info.compress_size} compressed), more than the {archive_bytes}-byte archive can "
        f"hold; the file is corrupt or crafted. {how}")


def npz_headers(path: Path, names: Iterable[str], what: str, how: str) -> dict[str, NpyHeader]:
  """The .npy headers of the members ``names`` (those present), checked, before any read.

  Each member must be a plain numeric array (no object dtype: nothing is ever
  unpickled) whose header announces exactly the bytes the member holds, and the
  zip directory's sizes must fit in the archive. Only then may ``np.load(path,
  allow_pickle=False)`` read the member: no size a file announces is allocated
  before it is checked.

  Args:
    path: an existing file starting like a zip archive.
    names: member names without ``.npy``.
    what: the file wanted, for messages ("a dSprites npz").
    how: ends the one-line messages.

  Raises:
    ValueError: an unreadable archive or member, an object array, a header or
      directory announcing more bytes than are there.
  """
  archive_bytes = path.stat().st_size
  headers = {}
  try:
    with zipfile.ZipFile(path) as zf:
      infos = {info.filename: info for info in zf.infolist()}
      for name in names:
        info = infos.get(f"{name}.npy")
        if info is not None:
          _check_member_size(info, path, archive_bytes, how)
          headers[name] = _member_header(zf, info, path, how)
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError,
          RuntimeError) as e:
    raise ValueError(f"Could not read {path} as {what} ({e}). {how}") from e
  return headers


def npz_member_names(path: Path, what: str, how: str) -> list[str]:
  """The array names (member names without ``.npy``) of an npz, without reading them."""
  try:
    with zipfile.ZipFile(path) as zf:
      return [n.removesuffix(".npy") for n in zf.namelist()]
  except (zipfile.BadZipFile, OSError) as e:
    raise ValueError(f"Could not read {path} as {what} ({e}). {how}") from e


def load_npz_arrays(path: Path, names: Iterable[str], what: str,
                    how: str) -> dict[str, np.ndarray]:
  """Reads the checked members ``names`` with ``allow_pickle=False`` (see :func:`npz_headers`)."""
  names = list(names)
  npz_headers(path, names, what, how)
  try:
    with np.load(path, allow_pickle=False) as data:
      return {name: data[name] for name in names}
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as e:
    raise ValueError(f"Could not read {path} as {what} ({e}). {how}") from e
