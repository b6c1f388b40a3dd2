"""Reading text corpora: UTF-8 lines, tokenisers, and the Tiny Shakespeare rules.

Readers only decode text (nothing is unpickled or evaluated) and check a file's size
before reading it. Every error names the file, and for bad bytes the line number.

* :func:`read_lines`: a file's non-blank lines as ``(line_number, text)``, 1-based,
  plus the number of blank (whitespace-only) lines skipped.
* :func:`whitespace_tokens`: ``text_lines`` and ``ptb`` split on whitespace, case kept.
* :func:`shakespeare_tokens`: lower-cased; words (letters and digits, with inner
  apostrophes as in ``we'll``, ``is't``) and every other non-space character (``, . ; :
  ? ! - '`` ...) as a token of its own.
* :func:`shakespeare_sentences`: the spoken lines of Tiny Shakespeare: not the blank
  lines, not the speaker lines (a line ending in ``:`` right after a blank line or at
  the top of the file, e.g. ``First Citizen:``).
* :func:`shakespeare_split`: the fixed split of a spoken line by its line number n
  (1-based, in the file): ``crc32(str(n)) mod 20`` = 0 → test, 1 → valid, else train
  (5 % / 5 % / 90 %).
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path

MAX_FILE_BYTES = 1 << 30  # 1 GiB: far above PTB (5 MB); a larger file is not a corpus here
_SHAKESPEARE_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[^\w\s]|_")


def read_lines(path: Path, how: str) -> tuple[list[tuple[int, str]], int]:
  """Non-blank lines of the UTF-8 text file ``path`` and the count of blank ones.

  Args:
    path: the file.
    how: how to get the file, ending the error messages.

  Returns:
    ``(lines, blank)``: ``lines`` the ``(line_number, text)`` of every line that is not
    whitespace only (text stripped, numbers 1-based), ``blank`` the number skipped.

  Raises:
    FileNotFoundError: no file at ``path`` (the message gives the absolute path).
    ValueError: a directory, a file over :data:`MAX_FILE_BYTES`, or bytes that are not
      UTF-8 (naming the line).
  """
  path = Path(path)
  if path.is_dir():
    raise ValueError(f"{path.resolve()} is a directory; expected a UTF-8 text file. {how}")
  if not path.is_file():
    raise FileNotFoundError(f"No file at {path.resolve()}. {how}")
  size = path.stat().st_size
  if size > MAX_FILE_BYTES:
    raise ValueError(f"{path.resolve()} holds {size} bytes, more than the {MAX_FILE_BYTES} a "
                     f"text corpus may have here. {how}")
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as error:
    line = raw.count(b"\n", 0, error.start) + 1
    raise ValueError(
        f"{path.resolve()}, line {line}: bytes that are not UTF-8 ({error.reason} at byte "
        f"{error.start}: {raw[error.start:error.start + 4]!r}). Text corpora must be UTF-8 "
        "(is the file compressed or in another encoding?).") from None
  lines, blank = [], 0
  for number, line in enumerate(text.splitlines(), start=1):
    stripped = line.strip()
    if stripped:
      lines.append((number, stripped))
    else:
      blank += 1
  return lines, blank


def whitespace_tokens(text: str) -> list[str]:
  """``text.split()``: the tokenisation of ``text_lines`` and ``ptb``."""
  return text.split()


def shakespeare_tokens(text: str) -> list[str]:
  """Lower-cased words and punctuation marks (module docstring)."""
  return _SHAKESPEARE_TOKEN.findall(text.lower())


def shakespeare_sentences(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
  """The spoken lines among the non-blank ``(line_number, text)`` of Tiny Shakespeare
  (:func:`read_lines`' output).

  A line is a speaker line when it ends in ``:`` and the line before it (number − 1)
  was blank or it is the first line of the file.
  """
  spoken, previous = [], 0
  for number, text in lines:
    after_blank = number == 1 or number - 1 != previous
    previous = number
    if not (text.endswith(":") and after_blank):
      spoken.append((number, text))
  return spoken


def shakespeare_split(line_number: int) -> str:
  """The split of the spoken line at 1-based ``line_number`` (module docstring)."""
  bucket = zlib.crc32(str(line_number).encode("ascii")) % 20
  return "test" if bucket == 0 else "valid" if bucket == 1 else "train"
