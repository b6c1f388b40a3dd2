"""Data files are data: no reader runs code from a file or allocates what a header claims.

Issue #22's reproduction first (an npz whose pickled ``metadata`` opens a file when
unpickled), then one crafted file per reader whose header announces far more data
than the file holds: each must fail with one clear ValueError before allocating.
The files are written here with struct, zipfile, gzip and h5py, not the readers' code.
"""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from vaejax import data
from vaejax.data import dsprites
from vaejax.data.mnist import amat, idx

pytestmark = pytest.mark.isa_independent  # nothing here depends on XLA's float code


class OpensAFile:
  """Unpickling it calls ``open(marker, "w")``: the issue's payload (harmless here)."""

  def __init__(self, marker: Path):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


def _malicious_npz(path: Path, marker: Path, imgs, classes, values) -> Path:
  np.savez(path, imgs=imgs, latents_classes=classes, latents_values=values,
           metadata=np.array(OpensAFile(marker), dtype=object))
  return path


def _grid_rows(n: int = 10):
  classes = dsprites.classes_of(np.arange(n) * 997)
  images = dsprites.render_numpy(classes)[..., 0].astype(np.uint8)
  return images, classes, dsprites.factor_values(classes)


def test_issue_reproduction_valid_arrays_load_and_metadata_is_ignored(tmp_path):
  marker = tmp_path / "PWNED"
  path = _malicious_npz(tmp_path / "evil.npz", marker, *_grid_rows())
  ds = data.load({"name": "dsprites", "path": str(path), "test_fraction": 0})
  assert ds.num_examples("train") == 10
  assert not marker.exists()


def test_issue_reproduction_zero_arrays_one_clear_error(tmp_path):
  # Exactly the issue's file: valid-looking zero arrays of the right shapes.
  marker = tmp_path / "PWNED"
  path = _malicious_npz(tmp_path / "evil.npz", marker, np.zeros((10, 64, 64), np.uint8),
                        np.zeros((10, 6), np.int64), np.zeros((10, 6)))
  with pytest.raises(ValueError) as info:
    data.load({"name": "dsprites", "path": str(path)})
  message = str(info.value)
  assert message.startswith(f"{path} is not a valid dSprites file: latents values disagree")
  assert "\n" not in message and "Could not read" not in message
  assert not marker.exists()


@pytest.mark.parametrize("key", ["imgs", "latents_classes"])
def test_object_arrays_are_never_unpickled_dsprites(tmp_path, key):
  marker = tmp_path / "PWNED"
  arrays = dict(zip(("imgs", "latents_classes", "latents_values"), _grid_rows(2)))
  arrays[key] = np.array([OpensAFile(marker)] * 2, dtype=object)
  np.savez(tmp_path / "obj.npz", **arrays)
  with pytest.raises(ValueError, match=f"member {key}.npy holds Python objects"):
    data.load({"name": "dsprites", "path": str(tmp_path / "obj.npz")})
  assert not marker.exists()


def test_object_arrays_are_never_unpickled_mnist(tmp_path):
  marker = tmp_path / "PWNED"
  np.savez(tmp_path / "m.npz", images=np.zeros((10, 28, 28), np.uint8),
           labels=np.array([OpensAFile(marker)] * 10, dtype=object))
  with pytest.raises(ValueError, match="member labels.npy holds Python objects"):
    data.load({"name": "mnist_npz", "path": str(tmp_path / "m.npz")})
  assert not marker.exists()


# ----------------------------------------------------------------------------- oversize npz


def _npy_header(shape, descr="|u1") -> bytes:
  """A version 1.0 .npy header (magic, length, dict literal padded to 64 bytes)."""
  text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
  text += " " * (-(len(text) + 11) % 64) + "\n"
  return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _npy(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array)
  return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes]) -> Path:
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
    for name, content in members.items():
      zf.writestr(name, content)
  return path


def _dsprites_members(imgs_npy: bytes) -> dict[str, bytes]:
  # imgs.npy is checked first: the latents need not match it for the test
  return {"imgs.npy": imgs_npy, "latents_classes.npy": _npy(np.zeros((10, 6), np.int64)),
          "latents_values.npy": _npy(np.zeros((10, 6)))}


def test_npz_header_claiming_more_than_the_member_holds(tmp_path):
  # 700,000 images announced (2.9 GB), 10 images' bytes present.
  imgs = _npy_header((700_000, 64, 64)) + bytes(10 * 64 * 64)
  path = _zip(tmp_path / "big.npz", _dsprites_members(imgs))
  with pytest.raises(ValueError, match="member imgs.npy: its header announces shape "
                     r"\(700000, 64, 64\) of uint8 \(2867200000 bytes\) but the member holds "
                     "40960 bytes"):
    data.load({"name": "dsprites", "path": str(path)})


def test_zip_directory_claiming_more_than_the_archive_holds(tmp_path):
  # Header and zip directory agree on 2.9 GB; the deflated member is a few kB.
  imgs = _npy_header((700_000, 64, 64)) + bytes(10 * 64 * 64)
  path = _zip(tmp_path / "big.npz", _dsprites_members(imgs))
  raw = bytearray(path.read_bytes())
  entry = raw.index(b"PK\x01\x02")  # the central directory entry of imgs.npy (written first)
  assert raw[entry + 46:entry + 54] == b"imgs.npy"
  raw[entry + 24:entry + 28] = struct.pack("<I", len(_npy_header((1,))) + 700_000 * 4096)
  path.write_bytes(bytes(raw))
  with pytest.raises(ValueError, match="member imgs.npy: the zip directory announces 2867200128 "
                     "bytes .* more than the .*-byte archive can hold"):
    data.load({"name": "dsprites", "path": str(path)})


def test_mnist_npz_header_claiming_a_billion_images(tmp_path):
  images = _npy_header((10**9, 28, 28)) + bytes(5 * 28 * 28)
  path = _zip(tmp_path / "m.npz", {"images.npy": images, "labels.npy": _npy(np.zeros(5, int))})
  with pytest.raises(ValueError, match=r"member images.npy: its header announces shape "
                     r"\(1000000000, 28, 28\)"):
    data.load({"name": "mnist_npz", "path": str(path)})


# ----------------------------------------------------------------------------- HDF5


def test_hdf5_dataspace_larger_than_the_grid(tmp_path):
  h5py = pytest.importorskip("h5py")
  path = tmp_path / "big.hdf5"
  with h5py.File(path, "w") as f:  # chunked and never written: a tiny file
    f.create_dataset("imgs", shape=(10**6, 64, 64), dtype=np.uint8, chunks=(1, 64, 64))
    f.create_dataset("latents/classes", shape=(10**6, 6), dtype=np.int64, chunks=(1, 6))
    f.create_dataset("latents/values", shape=(10**6, 6), dtype=np.float64, chunks=(1, 6))
  assert path.stat().st_size < 100_000
  with pytest.raises(ValueError, match="1000000 images announced, more than the 737280"):
    data.load({"name": "dsprites", "path": str(path)})


def test_hdf5_latents_claiming_a_trillion_rows(tmp_path):
  h5py = pytest.importorskip("h5py")
  images, _, values = _grid_rows(4)
  path = tmp_path / "big.hdf5"
  with h5py.File(path, "w") as f:
    f.create_dataset("imgs", data=images)
    f.create_dataset("latents/classes", shape=(10**12, 6), dtype=np.int64, chunks=(1, 6))
    f.create_dataset("latents/values", data=values)
  with pytest.raises(ValueError, match=r"latents classes \(1000000000000, 6\) / values \(4, 6\), "
                     r"expected \(4, 6\) each"):
    data.load({"name": "dsprites", "path": str(path)})


# ----------------------------------------------------------------------------- IDX and .amat


def _idx_dir(directory: Path, image_file: bytes, compress: bool) -> Path:
  directory.mkdir()
  good = {"train-labels-idx1-ubyte": struct.pack(">II", 0x801, 2) + bytes(2),
          "t10k-images-idx3-ubyte": struct.pack(">IIII", 0x803, 2, 28, 28) + bytes(2 * 784),
          "t10k-labels-idx1-ubyte": struct.pack(">II", 0x801, 2) + bytes(2)}
  for name, content in good.items():
    (directory / name).write_bytes(content)
  name = "train-images-idx3-ubyte"
  if compress:
    (directory / f"{name}.gz").write_bytes(gzip.compress(image_file, mtime=0))
  else:
    (directory / name).write_bytes(image_file)
  return directory


def test_idx_header_claiming_a_billion_images(tmp_path):
  content = struct.pack(">IIII", 0x803, 10**9, 28, 28) + bytes(2 * 784)
  path = _idx_dir(tmp_path / "plain", content, compress=False) / "train-images-idx3-ubyte"
  with pytest.raises(ValueError, match=f"{path} is truncated: its header says 1000000000 images "
                     r"of 28 x 28 pixels \(784000000000 bytes\) but 1568 bytes follow"):
    data.load({"name": "mnist_idx", "path": str(path.parent)})


def test_gzip_idx_header_claiming_more_than_deflate_can_hold(tmp_path):
  content = struct.pack(">IIII", 0x803, 10**9, 28, 28) + bytes(2 * 784)
  directory = _idx_dir(tmp_path / "gz", content, compress=True)
  with pytest.raises(ValueError, match=r"header says 1000000000 images .* but a gzip file of \d+ "
                     r"bytes holds at most \d+ bytes of data"):
    data.load({"name": "mnist_idx", "path": str(directory)})


def test_idx_dimensions_at_their_maximum_do_not_overflow(tmp_path):
  path = tmp_path / "huge-idx3-ubyte"
  path.write_bytes(struct.pack(">IIII", 0x803, 2**32 - 1, 2**32 - 1, 2**32 - 1) + bytes(16))
  with pytest.raises(ValueError, match=f"its header says {2**32 - 1} images .* "
                     f"\\({(2**32 - 1) ** 3} bytes\\) but 16 bytes follow"):
    idx.read_idx(path, 3)


@pytest.mark.parametrize("compress", [False, True])
def test_amat_line_longer_than_any_image(tmp_path, compress):
  text = b"0 1 " * 100_000  # 400 kB without a line end
  path = tmp_path / ("huge.amat.gz" if compress else "huge.amat")
  path.write_bytes(gzip.compress(text, mtime=0) if compress else text)
  with pytest.raises(ValueError, match=f"line 1: longer than {amat.MAX_LINE_BYTES} bytes; "
                     "expected 784 space-separated 0/1 values"):
    amat.read_amat(path)
