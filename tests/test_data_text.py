"""Token-sequence datasets: files, vocabulary, batches, random access and every bad input."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.text_fixtures import write_text_lines
from vaejax import data
from vaejax.data import arrays, text
from vaejax.types import BOS_ID, EOS_ID, PAD_ID, UNK_ID, DataSpec

SHAKESPEARE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinyshakespeare.txt"
TRAIN = ["the cat sat", "the dog sat", "", "a cat ran", "the end", "   ", "dog dog cat the"]


def _corpus(tmp_path: Path, **overrides) -> Path:
  splits = {"train": "\n".join(TRAIN) + "\n", "valid": "the cat\n", "test": "a dog sat\n\n"}
  splits.update(overrides)
  return write_text_lines(tmp_path / "corpus", splits)


def _load(path: Path, **options) -> text.TextDataset:
  return data.load({"name": "text_lines", "path": str(path), **options})


# ----------------------------------------------------------------------------- text_lines


def test_vocabulary_ids_are_fixed_and_deterministic(tmp_path):
  ds = _load(_corpus(tmp_path))
  # counts: the 4, cat 3, dog 3, sat 2, a/end/ran 1; ties alphabetical.
  assert ds.vocabulary.words == ("<pad>", "<unk>", "<bos>", "<eos>", "the", "cat", "dog",
                                 "sat", "a", "end", "ran")
  assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
  assert ds.spec == DataSpec.tokens(11, 5)  # longest: 4 words + <eos>


def test_sentences_end_with_eos_then_padding_and_blank_lines_are_counted(tmp_path):
  ds = _load(_corpus(tmp_path))
  train = ds.arrays("train")
  np.testing.assert_array_equal(train.tokens[0], [4, 5, 7, 3, 0])  # the cat sat <eos> <pad>
  np.testing.assert_array_equal(train.lengths, [4, 4, 4, 3, 5])
  np.testing.assert_array_equal(train.line_numbers, [1, 2, 4, 5, 7])
  assert train.tokens.dtype == np.int32 and train.lengths.dtype == np.int32
  assert ds.blank_lines[train.source] == 2 and ds.blank_lines[ds.arrays("test").source] == 1
  for split in text.SPLITS:  # every row: length − 1 words, <eos>, then only padding
    arr = ds.arrays(split)
    for row, n in zip(arr.tokens, arr.lengths):
      assert row[n - 1] == EOS_ID and np.all(row[:n - 1] > EOS_ID) and np.all(row[n:] == PAD_ID)


def test_min_count_and_max_vocab_map_the_rest_to_unk(tmp_path):
  ds = _load(_corpus(tmp_path), min_count=2)
  assert ds.vocabulary.words[4:] == ("the", "cat", "dog", "sat")
  assert ds.vocabulary.to_text(ds.arrays("train").tokens[2]) == "<unk> cat <unk>"  # a cat ran
  capped = _load(_corpus(tmp_path), max_vocab=9)
  assert capped.vocabulary.words[4:] == ("the", "cat", "dog", "sat", "a")
  assert capped.vocabulary.to_text(capped.arrays("test").tokens[0]) == "a dog sat"


def test_long_training_sentences_are_dropped_and_counted(tmp_path):
  ds = _load(_corpus(tmp_path), max_length=4)
  assert ds.dropped_train == 1 and ds.num_examples("train") == 4
  assert ds.spec.max_length == 4 and ds.arrays("train").tokens.shape == (4, 4)


def test_a_long_test_sentence_is_an_error_naming_its_line(tmp_path):
  path = _corpus(tmp_path, test="a dog\n\nthe cat sat down here\n")
  with pytest.raises(ValueError, match=r"test\.txt, line 3: a test sentence of 6 tokens"):
    _load(path, max_length=5)


def test_batches_are_random_access_with_the_image_datasets_order(tmp_path):
  ds = _load(_corpus(tmp_path))
  batch = ds.get_batch("train", 3, 2, seed=7)
  assert set(batch) == {"tokens", "length"}
  assert batch["tokens"].shape == (2, 5) and batch["tokens"].dtype == np.int32
  np.testing.assert_array_equal(batch["tokens"], ds.get_batch("train", 3, 2, 7)["tokens"])
  # The same epoch permutations as an ArrayDataset of as many examples (one scheme).
  n = ds.num_examples("train")
  rows = arrays.SplitArrays(np.zeros((n, 1, 1, 1), np.float32), factors=np.arange(n)[:, None])
  images = data.ArrayDataset("idx", {"train": rows}, image_shape=(1, 1, 1))
  train = ds.arrays("train")
  for step in range(5):
    idx = images.get_batch("train", step, 2, 7)["factors"][:, 0]
    np.testing.assert_array_equal(ds.get_batch("train", step, 2, 7)["tokens"], train.tokens[idx])
  it = ds.iterator("train", 2, seed=7)
  first = [next(it) for _ in range(3)]
  resumed = ds.iterator("train", 2, seed=7, start_step=it.position - 1)
  np.testing.assert_array_equal(next(resumed)["tokens"], first[-1]["tokens"])


# ----------------------------------------------------------------------------- ptb


def test_ptb_reads_mikolov_files_and_keeps_their_unk(tmp_path):
  for split, line in (("train", " a b <unk> c d\n e f\n"), ("valid", " a <unk>\n"),
                      ("test", " b c\n")):
    (tmp_path / f"ptb.{split}.txt").write_text(line, encoding="utf-8")
  ds = data.load({"name": "ptb", "path": str(tmp_path)})
  assert "<unk>" not in ds.vocabulary.words[4:]
  np.testing.assert_array_equal(ds.arrays("valid").tokens[0][:3], [4, UNK_ID, EOS_ID])


# ----------------------------------------------------------------------------- tiny_shakespeare

SMALL_PLAY = """First Citizen:
Before we proceed, hear me speak.

All:
Speak, speak!
We know't: we know't.

Second Citizen:
One word, good citizens:
Would you proceed?

"""


def test_shakespeare_keeps_spoken_lines_lower_cased_with_punctuation_split(tmp_path):
  path = tmp_path / "play.txt"
  path.write_text(SMALL_PLAY * 40, encoding="utf-8")  # enough lines for every split
  ds = data.load({"name": "tiny_shakespeare", "path": str(path)})
  lines = SMALL_PLAY.splitlines()
  spoken = {1, 4, 5, 8, 9}  # 0-based indices in one copy of the play
  everything = []
  for split in text.SPLITS:
    arr = ds.arrays(split)
    for number, row in zip(arr.line_numbers, arr.tokens):
      index = (number - 1) % len(lines)
      assert index in spoken  # never a speaker line, never blank
      bucket = zlib.crc32(str(number).encode()) % 20
      assert split == ("test" if bucket == 0 else "valid" if bucket == 1 else "train")
      everything.append((number, ds.vocabulary.to_text(row)))
  assert len(everything) == 5 * 40
  texts = dict(everything)
  assert texts[2] == "before we proceed , hear me speak ."
  assert texts[6] == "we know't : we know't ."
  assert texts[9] == "one word , good citizens :"  # a spoken line may end in ':'


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare.txt absent")
def test_real_tiny_shakespeare():
  ds = data.load({"name": "tiny_shakespeare", "max_vocab": 5000})
  sizes = {s: ds.num_examples(s) for s in text.SPLITS}
  assert sizes == {"train": 22956, "valid": 1288, "test": 1311}  # 25,555 spoken lines
  assert ds.spec == DataSpec.tokens(5000, 22) and ds.dropped_train == 0
  assert ds.vocabulary.words[4:8] == (",", ".", "the", "and")
  assert ds.vocabulary.to_text(ds.arrays("train").tokens[0]) == (
      "before we proceed any further , hear me speak .")


# ----------------------------------------------------------------------------- bad input


def test_missing_files_say_where_they_were_looked_for(tmp_path):
  path = _corpus(tmp_path)
  (path / "valid.txt").unlink()
  with pytest.raises(FileNotFoundError, match=f"No file at {path.resolve()}/valid.txt"):
    _load(path)
  with pytest.raises(FileNotFoundError, match="ptb: no folder at .*nowhere.*simple-examples"):
    data.load({"name": "ptb", "path": str(tmp_path / "nowhere")})
  with pytest.raises(ValueError, match="needs data.path"):
    data.load({"name": "text_lines"})
  with pytest.raises(FileNotFoundError, match="No file at .*absent.txt.*char-rnn"):
    data.load({"name": "tiny_shakespeare", "path": str(tmp_path / "absent.txt")})


def test_non_utf8_bytes_name_the_line(tmp_path):
  path = _corpus(tmp_path)
  (path / "train.txt").write_bytes(b"good line\nsecond\nbad \xff byte\n")
  with pytest.raises(ValueError, match=r"train\.txt, line 3: bytes that are not UTF-8"):
    _load(path)


@pytest.mark.parametrize("overrides, options, match", [
    ({"valid": "\n \n"}, {}, r"text_lines/valid has no sentences: .*valid\.txt"),
    ({"train": "a b c\na b\n"}, {}, r"has 3 word\(s\) besides the special tokens"),
    ({}, {"min_count": 3}, r"has 3 word\(s\).*min_count=3"),
    ({}, {"max_vocab": 7}, "max_vocab=7 must be an int >= 8"),
    ({}, {"min_count": 0}, "min_count=0 must be an int >= 1"),
    ({}, {"max_length": 1}, "max_length=1 must be an int >= 2"),
    ({"test": "a <eos> b\n"}, {}, r"test\.txt, line 1: the token\(s\) \['<eos>'\] are reserved"),
    ({}, {"max_length": 2}, "all 5 sentences .* longer than max_length=2"),
])
def test_bad_corpora_and_settings(tmp_path, overrides, options, match):
  with pytest.raises(ValueError, match=match):
    _load(_corpus(tmp_path, **overrides), **options)


def test_file_size_is_checked_before_reading(tmp_path, monkeypatch):
  path = _corpus(tmp_path)
  monkeypatch.setattr(text.corpus, "MAX_FILE_BYTES", 8)
  with pytest.raises(ValueError, match=r"train\.txt holds \d+ bytes, more than the 8"):
    _load(path)


def test_binarisation_is_refused_and_its_neutral_value_accepted(tmp_path):
  """One training config can switch data.name: text takes binarize='none' (the schema's
  default) and refuses a real binarisation."""
  path = str(_corpus(tmp_path))
  with pytest.raises(ValueError, match="no pixels to binarise: data.binarize='static'"):
    data.load({"name": "text_lines", "path": path, "binarize": "static"})
  assert data.load({"name": "text_lines", "path": path, "binarize": "none"}).spec.kind == "tokens"
  with pytest.raises(ValueError, match="'binarize_seed' does not apply to dataset 'text_lines'"):
    data.load({"name": "text_lines", "path": path, "binarize_seed": 3})
