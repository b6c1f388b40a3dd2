r"""Sweep reports: a results table per setting, a rate–distortion plot, KL-per-dimension maps.

Input: the per-model rows of :func:`vaejax.sweep.train_sweep` (``results.jsonl``): the
model's ``seed`` and loss settings, ``active``, and its final metrics (``eval/*`` when the
sweep evaluated, else the last training batch's). Models that share settings and differ
only in seed form one *setting*; its numbers are the mean and the sample standard
deviation (ddof = 1) over its seeds. Diverged (masked) models are counted but left out
of the means.

* Rate R = E_x KL(q(z|x) ‖ p(z)) and distortion D = −E_x E_q[log p(x|z)], in nats: the
  rate–distortion plot draws one point per setting at (R, D) with ±1 std error bars
  over seeds (Alemi et al. 2018 read β-VAE sweeps this way).
* The KL-per-dimension heatmap shows, per setting (rows), each model's E_x KL_j sorted
  from its largest to its smallest dimension (columns: rank) and averaged over seeds;
  sorting first because dimension j of one seed has nothing to do with dimension j of
  another. Free bits hold dimensions whose rate would otherwise collapse to 0 at about
  λ nats.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
import numpy as np

from vaejax import plotting
from vaejax.objectives import LossSettings

Figure = matplotlib.figure.Figure

# Reported metrics: (column, eval key, train-batch fallback key, sign). Distortion is −recon.
METRICS = (
    ("elbo", "eval/elbo", "elbo", 1.0),
    ("rate", "eval/kl", "kl", 1.0),
    ("distortion", "eval/recon", "recon", -1.0),
    ("active_units", "eval/active_units", None, 1.0),
    ("bits_per_dim", "eval/bits_per_dim", None, 1.0),
    ("loss", "loss", "loss", 1.0),
)
ACTIVE_KL = 0.01  # nats: a dimension below this mean KL counts as collapsed in the heatmap


def varying_settings(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
  """The LossSettings fields whose values differ between rows."""
  return tuple(f for f in LossSettings._fields if len({r.get(f) for r in rows}) > 1)


def _value(row: Mapping[str, Any], key: str | None, fallback: str | None, sign: float) -> float:
  for k in (key, fallback):
    if k is not None and k in row and row[k] is not None:
      return sign * float(row[k])
  return math.nan


def _kl_per_dim(row: Mapping[str, Any]) -> np.ndarray | None:
  value = row.get("eval/kl_per_dim", row.get("kl_per_dim"))
  return None if value is None else np.asarray(value, np.float64)


def aggregate(rows: Sequence[Mapping[str, Any]],
              fields: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """One dict per setting: the ``fields`` values, ``seeds``, ``num_masked``, and for every
  metric of :data:`METRICS` its ``mean``/``std`` over active seeds, plus ``kl_per_dim``
  (the mean over seeds of E_x KL_j), ``kl_sorted`` (the mean over seeds of each model's
  KL per dimension sorted in decreasing order) and ``alive_dims`` (the mean number of
  dimensions above :data:`ACTIVE_KL`).

  Args:
    rows: per-model rows (see the module docstring).
    fields: the settings that define a group (default: those that vary).

  Raises:
    ValueError: no rows, or rows without a field of ``fields``.
  """
  if not rows:
    raise ValueError("aggregate needs at least one result row; got none.")
  fields = tuple(varying_settings(rows) if fields is None else fields)
  for f in fields:
    if any(f not in r for r in rows):
      raise ValueError(f"Every row needs the setting {f!r}; some rows lack it.")
  groups: dict[tuple, list[Mapping[str, Any]]] = {}
  for row in rows:
    groups.setdefault(tuple(row[f] for f in fields), []).append(row)
  out = []
  for key, members in groups.items():
    alive = [r for r in members if r.get("active", True)]
    entry: dict[str, Any] = dict(zip(fields, key))
    entry["seeds"] = [r.get("seed") for r in members]
    entry["num_masked"] = len(members) - len(alive)
    for name, k, fallback, sign in METRICS:
      values = np.asarray([_value(r, k, fallback, sign) for r in alive], np.float64)
      finite = values[np.isfinite(values)]
      entry[f"{name}_mean"] = float(finite.mean()) if finite.size else math.nan
      entry[f"{name}_std"] = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    kls = [v for v in (_kl_per_dim(r) for r in alive) if v is not None]
    same = len({k.shape for k in kls}) == 1
    entry["kl_per_dim"] = np.mean(kls, axis=0).tolist() if kls and same else None
    entry["kl_sorted"] = (np.mean([np.sort(k)[::-1] for k in kls], axis=0).tolist()
                          if kls and same else None)
    entry["alive_dims"] = (float(np.mean([(k > ACTIVE_KL).sum() for k in kls]))
                           if kls else math.nan)
    out.append(entry)
  return out


def _label(entry: Mapping[str, Any], fields: Sequence[str]) -> str:
  return ", ".join(f"{f}={entry[f]:g}" for f in fields) or "all models"


def _columns(fields: Sequence[str]) -> list[str]:
  cols = list(fields) + ["n_seeds", "n_masked"]
  for name, *_ in METRICS:
    cols += [f"{name}_mean", f"{name}_std"]
  return cols


def _cells(entry: Mapping[str, Any], fields: Sequence[str]) -> list[Any]:
  cells = [entry[f] for f in fields] + [len(entry["seeds"]), entry["num_masked"]]
  for name, *_ in METRICS:
    cells += [entry[f"{name}_mean"], entry[f"{name}_std"]]
  return cells


def table_csv(groups: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
  """CSV text: one row per setting, every metric's mean and std."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(_columns(fields))
  for entry in groups:
    writer.writerow(_cells(entry, fields))
  return buffer.getvalue()


def table_markdown(groups: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> str:
  """A markdown table: settings, seeds, masked models, and ``mean ± std`` per metric."""
  head = list(fields) + ["seeds", "masked"] + [name for name, *_ in METRICS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for entry in groups:
    cells = [f"{entry[f]:g}" for f in fields] + [str(len(entry["seeds"])),
                                                 str(entry["num_masked"])]
    for name, *_ in METRICS:
      mean, std = entry[f"{name}_mean"], entry[f"{name}_std"]
      cells.append("—" if math.isnan(mean) else f"{mean:.2f} ± {std:.2f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_rate_distortion(groups: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> Figure:
  """Distortion (−E log p(x|z)) against rate (E KL), one point per setting, ±1 std bars."""
  fig, ax = plt.subplots(figsize=(6.0, 4.5))
  for entry in groups:
    r, d = entry["rate_mean"], entry["distortion_mean"]
    if math.isnan(r) or math.isnan(d):
      continue
    ax.errorbar(r, d, xerr=entry["rate_std"], yerr=entry["distortion_std"], fmt="o",
                capsize=3, markersize=5)
    ax.annotate(_label(entry, fields), (r, d), textcoords="offset points", xytext=(5, 4),
                fontsize=8)
  ax.set_xlabel("rate: mean KL(q(z|x) ‖ p(z)) (nats)")
  ax.set_ylabel("distortion: −mean log p(x|z) (nats)")
  seeds = max((len(e["seeds"]) for e in groups), default=0)
  ax.set_title(f"Rate–distortion, one point per setting\n(error bars: ±1 std over seeds, "
               f"{seeds} per setting)", fontsize=10)
  ax.spines[["top", "right"]].set_visible(False)
  fig.tight_layout()
  return fig


def plot_kl_heatmap(groups: Sequence[Mapping[str, Any]], fields: Sequence[str],
                    threshold: float = ACTIVE_KL) -> Figure:
  """Each setting's KL spectrum: mean KL (nats) of its models' dimensions by rank.

  Rows are settings, columns the rank of a dimension in its model (1 = largest KL),
  values ``kl_sorted`` of :func:`aggregate`. Cells below ``threshold`` (collapsed
  dimensions) are grey; each row's label gives the mean number of dimensions above it.

  Raises:
    ValueError: no setting has ``kl_sorted`` or their lengths differ.
  """
  rows = [e for e in groups if e.get("kl_sorted") is not None]
  if not rows or len({len(e["kl_sorted"]) for e in rows}) != 1:
    raise ValueError("plot_kl_heatmap needs kl_sorted of one length for every setting.")
  kl = np.asarray([e["kl_sorted"] for e in rows], np.float64)
  num, dims = kl.shape
  fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * dims + 2.5), max(2.5, 0.42 * num + 1.4)))
  image = ax.imshow(np.log10(np.maximum(kl, 1e-3)), cmap="viridis", aspect="auto",
                    vmin=-3, vmax=max(1.0, float(np.log10(max(kl.max(), 1e-3)))))
  for i in range(num):
    for j in range(dims):
      value = kl[i, j]
      if value < threshold:
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="lightgrey"))
      ax.text(j, i, f"{value:.2f}" if value < 10 else f"{value:.0f}", ha="center",
              va="center", fontsize=6, color="black" if value < threshold else "white")
  labels = [f"{_label(e, fields)}  ({e['alive_dims']:.3g}/{dims} alive)" for e in rows]
  ax.set_yticks(np.arange(num))
  ax.set_yticklabels(labels, fontsize=8)
  ax.set_xticks(np.arange(dims))
  ax.set_xticklabels([str(j + 1) for j in range(dims)], fontsize=7)
  ax.set_xlabel("latent dimensions, sorted by KL within each model (rank)", fontsize=8)
  bar = fig.colorbar(image, ax=ax)
  bar.set_label("log10 mean KL (nats)")
  ax.set_title(f"KL per latent dimension (nats), sorted per model, averaged over seeds\n"
               f"grey: below {threshold:g} nats (collapsed)", fontsize=9)
  fig.tight_layout()
  return fig


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 fields: Sequence[str] | None = None) -> list[Path]:
  """Writes ``results.md``, ``results.csv``, ``summary.json``, ``rate_distortion.png`` and
  (when rows have ``kl_per_dim``) ``kl_per_dim.png`` to ``out_dir``; returns the paths."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  fields = tuple(varying_settings(rows) if fields is None else fields)
  groups = aggregate(rows, fields)
  paths = [out_dir / "results.md", out_dir / "results.csv", out_dir / "summary.json"]
  paths[0].write_text(table_markdown(groups, fields))
  paths[1].write_text(table_csv(groups, fields))
  paths[2].write_text(json.dumps(groups, indent=1) + "\n")
  paths.append(plotting.save_figure(plot_rate_distortion(groups, fields),
                                    out_dir / "rate_distortion.png"))
  if any(g.get("kl_sorted") is not None for g in groups):
    paths.append(plotting.save_figure(plot_kl_heatmap(groups, fields),
                                      out_dir / "kl_per_dim.png"))
  return paths
