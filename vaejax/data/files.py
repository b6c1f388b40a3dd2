"""Raw data files: finding them, telling their format from their bytes, reading them.

Every check raises one clear error: FileNotFoundError for a file that is not
there, ValueError for a file that is not what it should be; the message names
the full path and says what was expected.

Formats are told by their first bytes, never by the file name (a browser that
un-gzips a download keeps the ``.gz``; any file can be named ``x.npz``):

* zip (npz): ``PK\\x03\\x04``, or ``PK\\x05\\x06`` for an empty archive;
* gzip: ``\\x1f\\x8b``;
* a single ``.npy`` array: ``\\x93NUMPY``; HDF5: ``\\x89HDF``.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_SIGNATURES = (
    (b"\x93NUMPY", "a single .npy array"),
    (GZIP_MAGIC, "gzip-compressed data"),
    (b"\x89HDF", "an HDF5 file"),
    (b"PK", "a zip archive"),
)
_TEXT_BYTES = frozenset(range(32, 127)) | frozenset(b"\t\n\r")


def head(path: Path, size: int = 8) -> bytes:
  """The first ``size`` bytes of the file at ``path``."""
  with open(path, "rb") as f:
    return f.read(size)


def describe(magic: bytes) -> str:
  """What a file's first bytes say it is, for error messages ("plain text", ...)."""
  if not magic:
    return "an empty file"
  for signature, kind in _SIGNATURES:
    if magic.startswith(signature):
      return kind
  if set(magic) <= _TEXT_BYTES:
    return "plain text"
  return "unknown binary data"


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


def read_bytes(path: Path, how: str) -> bytes:
  """The contents of ``path``, un-gzipped when its bytes start with the gzip magic.

  Raises:
    ValueError: truncated or corrupt gzip data (message ends with ``how``).
  """
  raw = path.read_bytes()
  if not raw.startswith(GZIP_MAGIC):
    return raw
  try:
    return gzip.decompress(raw)
  except (EOFError, OSError, zlib.error) as e:
    raise ValueError(f"{path} is truncated or corrupt gzip data ({e}). {how}") from e
