r"""The accelerator figures in one time-boxed call: train step, sweep, renderer, β study.

``PYTHONPATH=. python -m experiments.benchmarks.device_suite [--budget_s=540]
[--out=device_suite.md] [--smoke] [--parts=train_step,sweep,render,beta_study]``

Runs, in this order, each part with a share of ``--budget_s`` (:data:`SHARES`; the time a
part leaves unused goes to the parts after it) and stopped cleanly at its share:

1. ``train_step``: the dSprites conv VAE (disentanglement_lib's net) train step at batch 64
   and 1024, float32 and bfloat16 (``model.dtype``): images/s of vaejax (its default
   ``conv_impl`` and ``textbook``) and of its PyTorch twin on the same device, interleaved
   in this process (:mod:`.train_step`);
2. ``sweep``: 16 small models (the MLP VAE on 28×28 images; the conv VAE), one vmapped
   program against the same 16 models one after another: images/s of the whole sweep
   (:mod:`.sweep_throughput`; the goal on a GPU is ≥ 8×);
3. ``render``: procedural dSprites rendered on the device, images/s (:mod:`.render_speed`);
4. ``beta_study``: the dSprites β study at disentanglement_lib's settings through the one
   engine, then the disentanglement metrics (:mod:`.beta_study_speed`).

Every measurement is one JSON line on stdout (``part``, ``status`` = ok | stopped |
skipped | error, ``setting``, ``summary`` and the figures; other output goes to stderr);
the Markdown table is rewritten to ``--out`` after every part, so a killed call keeps what
it measured. Missing packages are named in one line before anything runs; a part that
cannot run is reported as skipped with the reason; a part that fails is reported as an
error in one line (its traceback goes to ``<out>.errors.log``) and the suite goes on.
``--smoke`` runs every part on the CPU at tiny sizes (about a minute of CPU, most of it
compiling), as ``tests/test_device_suite.py`` does.

**Launch on a lent GPU** (the device tool: no package registry there, so the pieces its
image lacks, ml_collections and tensorboardX, travel as wheels in the ignored ``.whl/``).
Here, once, in the repository root::

  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
      ml_collections==1.1.0 tensorboardX==2.6.5

then one call with ``carry=[".whl"]`` and ``timeout_s=600``::

  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=.:/tmp/site PYTHONUNBUFFERED=1 && timeout 585 python3 -m experiments.benchmarks.device_suite --budget_s=540 --out $OUT/device_suite.md 2> $OUT/device_suite.log | tee $OUT/device_suite.jsonl

The JSON lines, the table, the log and any tracebacks (``device_suite.md.errors.log``) come
back from ``$OUT``. Rerun one failed part with ``--parts=NAME`` (and a smaller ``--budget_s``).
Not yet run on a GPU (``experiments/benchmarks/RESULTS.md``, "Device suite").
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from experiments.benchmarks.device_parts import PART_FUNCTIONS, SMOKE, Sizes

# JAX, torch and vaejax are imported inside the functions: the platform must be chosen
# (``--smoke`` pins the CPU) and the pieces checked before any of them loads.

PARTS = ("train_step", "sweep", "render", "beta_study")
SHARES = {"train_step": 0.25, "sweep": 0.2, "render": 0.05, "beta_study": 0.5}
CORE = ("numpy", "jax", "flax", "optax", "chex", "absl")
# Optional pieces: module → (the part that needs it, what happens without it).
OPTIONAL = {
    "torch": ("train_step", "the PyTorch twin is skipped"),
    "ml_collections": ("beta_study", "the part is skipped"),
    "orbax.checkpoint": ("beta_study", "the part is skipped"),
    "tensorboardX": ("beta_study", "the part is skipped"),
    "sklearn": ("beta_study", "the part is skipped"),
}


class Budget:
  """Deadlines of the parts: each gets its share of the time left by the parts before it."""

  def __init__(self, seconds: float, parts: tuple[str, ...]):
    self.start = time.perf_counter()
    self.end = self.start + seconds
    self._shares = {p: SHARES[p] for p in parts}

  def deadline(self, part: str) -> float:
    """Called as ``part`` starts: now + (its share of the parts not yet run) × time left."""
    now = time.perf_counter()
    fraction = self._shares[part] / sum(self._shares.values())
    del self._shares[part]
    return now + max(self.end - now, 0.0) * fraction


# ----------------------------------------------------------------------------- environment


def missing_modules(names) -> dict[str, str]:
  """``{module: why}`` for each of ``names`` that does not import."""
  missing = {}
  for name in names:
    try:
      importlib.import_module(name)
    except Exception as error:  # pylint: disable=broad-except  (a broken install counts)
      missing[name] = f"{type(error).__name__}: {error}"
  return missing


def requirements_line(missing: dict[str, str]) -> str:
  """One line naming each missing piece and what the suite does without it."""
  if not missing:
    return "All pieces present: " + ", ".join((*CORE, *OPTIONAL)) + "."
  parts = []
  for name in missing:
    part, effect = OPTIONAL.get(name, ("every part", "the suite cannot run"))
    parts.append(f"{name} ({part}: {effect})")
  return ("Missing: " + "; ".join(parts) + ". Carry the pure-Python ones as wheels "
          "(python -m experiments.benchmarks.device_suite --help shows how).")


def environment(torch_device: str | None, torch_note: str) -> dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  record = {"backend": jax.default_backend(), "platform": jax.devices()[0].platform,
            "device": jax.devices()[0].device_kind,
            "num_devices": jax.device_count(), "jax_version": jax.__version__,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "torch_device": torch_device, "torch": torch_note,
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
  return record


def pick_torch_device(have_torch: bool) -> tuple[str | None, str]:
  """Where the PyTorch twin runs (the device JAX uses), or None and why it cannot."""
  import jax  # pylint: disable=g-import-not-at-top
  if not have_torch:
    return None, "torch is not installed"
  import torch  # pylint: disable=g-import-not-at-top
  note = f"torch {torch.__version__}"
  platform_name = jax.devices()[0].platform
  if platform_name == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)
    return "cpu", note
  if platform_name in ("gpu", "cuda") and torch.cuda.is_available():
    # XLA runs float32 matrix products in TF32 on this hardware by default: so does the twin.
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    return "cuda", f"{note}, {torch.cuda.get_device_name(0)}, TF32 on as in XLA"
  return None, f"{note} cannot use the device JAX runs on ({platform_name})"


# ----------------------------------------------------------------------------- report


def markdown(header: dict[str, Any], records: list[dict[str, Any]]) -> str:
  """The table of every record so far, under the device and the command."""
  lines = ["# vaejax device suite", "",
           f"- device: {header['device']} (JAX backend `{header['backend']}`, "
           f"{header['num_devices']} device(s)); {header['cpu_count']} CPU cores; jax "
           f"{header['jax_version']}; PyTorch twin: {header['torch']}",
           f"- command: `{header['command']}`",
           f"- budget: {header['budget_s']:g} s; started {header['date']}",
           f"- pieces: {header['requirements']}", "",
           "| part | setting | result | status |", "|---|---|---|---|"]
  for r in records:
    if not r.get("table_row", True):  # per-model lines: the JSON has them, a sub-table sums up
      continue
    status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('reason', '')}"
    lines.append(f"| {r['part']} | {r.get('setting', '')} | {r.get('summary', '—')} | "
                 f"{status.replace('|', '/')} |")
  details = [r["details_md"] for r in records if r.get("details_md")]
  return "\n".join(lines + [""] + [d + "\n" for d in details]).rstrip() + "\n"


def emit(record: dict[str, Any], records: list[dict[str, Any]], header: dict[str, Any],
         out: Path, stdout) -> None:
  """Prints one JSON line and rewrites the Markdown file (a killed call keeps both)."""
  from vaejax.utils.files import atomic_write_text  # pylint: disable=g-import-not-at-top
  print(json.dumps({"suite": "device_suite", **record}, default=str), file=stdout, flush=True)
  if "part" in record and record["part"] in PARTS:
    records.append(record)
  atomic_write_text(out, markdown(header, records))


def run_part(name: str, deadline: float, sizes: Sizes, ctx: dict[str, Any],
             errors: Path) -> Iterator[dict]:
  """The part's records, each with ``part`` and ``seconds`` (since the part started); an
  exception becomes one ``error`` record (traceback appended to ``errors``)."""
  start = time.perf_counter()
  try:
    for record in PART_FUNCTIONS[name](deadline, sizes, ctx):
      yield {"part": name, **record, "seconds": round(time.perf_counter() - start, 2)}
  except Exception as error:  # pylint: disable=broad-except  (one line; the suite goes on)
    with errors.open("a") as f:
      f.write(f"--- part {name}\n{traceback.format_exc()}\n")
    reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    yield {"part": name, "status": "error", "reason": f"{reason[:300]} (traceback: {errors})",
           "seconds": round(time.perf_counter() - start, 2)}


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   epilog=__doc__[__doc__.index("**Launch"):],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--budget_s", type=float, default=540.0,
                      help="Seconds for the whole suite, shared among the parts.")
  parser.add_argument("--out", default="device_suite.md", help="The Markdown table.")
  parser.add_argument("--smoke", action="store_true",
                      help="Every part on the CPU at tiny sizes (a check, not a measurement).")
  parser.add_argument("--parts", default=",".join(PARTS),
                      help=f"Comma-separated subset of {','.join(PARTS)} (run in that order).")
  args = parser.parse_args(argv)
  if not args.budget_s > 0:
    parser.error(f"--budget_s must be > 0 seconds, got {args.budget_s}.")
  parts = [p.strip() for p in args.parts.split(",") if p.strip()]
  unknown = [p for p in parts if p not in PARTS]
  if unknown or not parts:
    parser.error(f"--parts={args.parts!r}: unknown {unknown or 'none given'}; choose from "
                 f"{','.join(PARTS)}.")
  args.parts = tuple(p for p in PARTS if p in parts)
  out = Path(args.out)
  if out.is_dir() or not out.parent.is_dir():
    parser.error(f"--out={args.out!r} must be a file in an existing directory.")
  return args


def main(argv: list[str] | None = None) -> int:
  """Runs the suite of the command line ``argv``; returns the exit status (1: a part
  failed; 2: a core package is missing)."""
  args = parse_args(argv)
  if args.smoke:
    os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX starts
  # JAX takes this fraction of an accelerator's memory up front; the rest is the twin's.
  os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
  stdout = sys.stdout
  command = "python -m experiments.benchmarks.device_suite " + " ".join(
      sys.argv[1:] if argv is None else argv)
  missing = missing_modules((*CORE, *OPTIONAL))
  line = requirements_line(missing)
  print(line, file=sys.stderr, flush=True)
  if any(name in CORE for name in missing):
    print(json.dumps({"suite": "device_suite", "part": "requirements", "status": "error",
                      "missing": missing, "reason": line}), flush=True)
    return 2
  with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as cache:
    return _run(args, missing, line, command, stdout, cache)


def _run(args, missing, line, command, stdout, cache_dir) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  if not getattr(jax.config, "jax_compilation_cache_dir", None):
    # The β study resumes its probe run: the same programs load instead of compiling again.
    try:
      jax.config.update("jax_compilation_cache_dir", cache_dir)
      jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    except (AttributeError, ValueError) as error:  # only a speed-up: go on without it
      print(f"No compilation cache ({error}).", file=sys.stderr)
  torch_device, torch_note = pick_torch_device("torch" not in missing)
  header = {**environment(torch_device, torch_note), "command": command,
            "budget_s": args.budget_s, "requirements": line, "smoke": args.smoke}
  out = Path(args.out)
  errors = out.with_name(out.name + ".errors.log")
  records: list[dict[str, Any]] = []
  emit({"part": "environment", **header, "missing": missing}, records, header, out, stdout)
  sizes = SMOKE if args.smoke else Sizes()
  budget = Budget(args.budget_s, args.parts)
  ctx = {"torch_device": torch_device, "torch_note": torch_note}
  failed = False
  for name in args.parts:
    deadline = budget.deadline(name)
    needs = [m for m, (part, _) in OPTIONAL.items() if part == name and m != "torch"]
    absent = [m for m in needs if m in missing]
    if absent:
      emit({"part": name, "status": "skipped", "reason": f"missing {', '.join(absent)}: "
            "carry it as a wheel (see --help)"}, records, header, out, stdout)
      continue
    for record in run_part(name, deadline, sizes, ctx, errors):
      failed |= record["status"] == "error"
      emit(record, records, header, out, stdout)
  total = round(time.perf_counter() - budget.start, 1)
  # Compiling cannot be cut short: a part may overrun its share by one setting's setup.
  emit({"part": "done", "status": "error" if failed else "ok", "seconds": total,
        "over_budget_s": round(max(total - args.budget_s, 0.0), 1), "out": str(out)},
       records, header, out, stdout)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
