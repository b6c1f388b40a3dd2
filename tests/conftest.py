"""Test-session settings.

Most of the suite's time is XLA compiling small programs, and many tests (and the
subprocesses they start, which inherit the environment) compile the same ones. A
persistent JAX compilation cache shared by the pytest-xdist workers and those
subprocesses compiles each program once per machine. Entries are keyed by the program,
the compile options and the JAX version, so a stale entry is never used; set
``JAX_COMPILATION_CACHE_DIR`` yourself to put the cache elsewhere.
"""

import os
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), f"vaejax-tests-jax-cache-{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


import jax  # noqa: E402  (after the cache settings, which JAX reads when it starts)
import pytest  # noqa: E402


class _Uncompilable:
  """A ``jax.jit`` function that refuses to run or lower (wrapping is free, compiling not)."""

  def __init__(self, jitted):
    self._jitted = jitted

  def __call__(self, *args, **kwargs):
    raise AssertionError("a jitted function ran before the error was raised")

  def lower(self, *args, **kwargs):
    raise AssertionError("a jitted function was lowered before the error was raised")

  def __getattr__(self, name):
    return getattr(self._jitted, name)


@pytest.fixture
def no_compiling(monkeypatch):
  """Makes every function jitted through ``jax.jit`` fail when it would compile: checks
  that an error comes before any compilation."""
  real_jit = jax.jit
  monkeypatch.setattr(jax, "jit", lambda *a, **k: _Uncompilable(real_jit(*a, **k)))
