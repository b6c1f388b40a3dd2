r"""The reproduction's report: mean ± std over seeds, tables, metric-vs-β plots, traversals.

Input: one row per trained model (see :func:`vaejax.reproduction.collect_rows`): its grid
``value`` (e.g. β) and ``seed``, every disentanglement score under its
``evaluate_all`` key (``"mig/discrete_mig"``, ...) and the ELBO terms of the final
evaluation, ``rate`` = E_x KL(q(z|x) ‖ p(z)) and ``distortion`` = −E_x E_q log p(x|z)
(nats). Rows sharing a value form a group; its numbers are the mean and the sample
standard deviation (ddof = 1, undefined for one seed) over seeds of the finite values.

Every output carries the budget label (e.g. "SMOKE SCALE (CPU): 2000 steps, 2 seeds —
not the dlib budget"): the markdown heading, a ``budget`` CSV column and plot titles.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np

Figure = matplotlib.figure.Figure

# (column title, row key): the headline numbers of the markdown table and the plot.
HEADLINE = (
    ("BetaVAE", "beta_vae/eval_accuracy"),
    ("FactorVAE", "factor_vae/eval_accuracy"),
    ("MIG", "mig/discrete_mig"),
    ("DCI dis.", "dci/disentanglement"),
    ("SAP", "sap/sap_score"),
    ("Modularity", "modularity_explicitness/modularity_score"),
    ("rate (KL)", "rate"),
    ("distortion", "distortion"),
    ("active units", "active_units"),
)
_NOT_SCORES = ("value", "seed", "step")

# Published dSprites figures (REFERENCES.md; secondary source: Lin et al. 2020, Table 1,
# best reported results, not per β). Higgins et al.'s BetaVAE 99.23% is unverified.
PUBLISHED = {
    "beta_vae": {"β-VAE": "FactorVAE 0.63 ± 0.10, MIG 0.21",
                 "VAE (β = 1)": "FactorVAE 0.63 ± 0.06, MIG 0.10"},
    "beta_tcvae": {"β-TCVAE": "FactorVAE 0.62 ± 0.07, MIG 0.45"},
    "annealed_vae": {},
}


def _number(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def score_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every numeric key of the rows but value/seed/step: headline keys first, then sorted."""
  keys = set()
  for row in rows:
    keys |= {k for k, v in row.items() if k not in _NOT_SCORES and isinstance(
        v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)}
  head = [k for _, k in HEADLINE if k in keys]
  return head + sorted(keys - set(head))


def aggregate(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """One group per grid value, sorted by value: ``value``, ``seeds``, ``mean``, ``std``, ``n``.

  ``mean[k]``/``std[k]`` are over the seeds whose value of ``k`` is finite (``n[k]`` of
  them); the std is the sample std (ddof = 1) and NaN for fewer than two.

  Raises:
    ValueError: no rows, a row without ``value`` or ``seed``, or a (value, seed) twice.
  """
  if not rows:
    raise ValueError("aggregate needs at least one result row; got none.")
  seen = set()
  for row in rows:
    if "value" not in row or "seed" not in row:
      raise ValueError(f"Every row needs 'value' and 'seed'; got keys {sorted(row)}.")
    key = (float(row["value"]), int(row["seed"]))
    if key in seen:
      raise ValueError(f"Two rows for value {key[0]:g}, seed {key[1]}.")
    seen.add(key)
  keys = score_keys(rows)
  groups = []
  for value in sorted({float(r["value"]) for r in rows}):
    members = sorted((r for r in rows if float(r["value"]) == value), key=lambda r: r["seed"])
    entry = {"value": value, "seeds": [int(r["seed"]) for r in members],
             "mean": {}, "std": {}, "n": {}}
    for key in keys:
      x = np.asarray([_number(r.get(key)) for r in members], np.float64)
      x = x[np.isfinite(x)]
      entry["n"][key] = int(x.size)
      entry["mean"][key] = float(x.mean()) if x.size else math.nan
      entry["std"][key] = float(x.std(ddof=1)) if x.size > 1 else math.nan
    groups.append(entry)
  return groups


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
  """``"0.63 ± 0.10"``; the mean alone when the std is undefined; ``"—"`` for no value."""
  if math.isnan(mean):
    return "—"
  if math.isnan(std):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_markdown(groups: Sequence[Mapping[str, Any]], label: str, parameter_label: str,
                   details: str = "") -> str:
  """A markdown table (headline numbers, mean ± std over seeds) under the budget label."""
  present = [(title, key) for title, key in HEADLINE if key in groups[0]["mean"]]
  head = [parameter_label, "seeds"] + [title for title, _ in present]
  lines = [f"**{label}**", ""]
  if details:
    lines += [details, ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in groups:
    cells = [f"{g['value']:g}", str(len(g["seeds"]))]
    for _, key in present:
      digits = 1 if key in ("rate", "distortion", "active_units") else 2
      cells.append(format_mean_std(g["mean"][key], g["std"][key], digits))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def table_csv(groups: Sequence[Mapping[str, Any]], label: str, parameter: str) -> str:
  """CSV: one row per value; ``budget`` (the label) first, then every key's mean and std."""
  keys = list(groups[0]["mean"])
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["budget", parameter, "n_seeds"]
                  + [f"{k}_{s}" for k in keys for s in ("mean", "std")])
  for g in groups:
    writer.writerow([label, g["value"], len(g["seeds"])]
                    + [repr(g[s][k]) for k in keys for s in ("mean", "std")])
  return buffer.getvalue()


def runs_csv(rows: Sequence[Mapping[str, Any]], label: str, parameter: str) -> str:
  """CSV: one row per trained model, every score (for re-analysis)."""
  keys = score_keys(rows)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["budget", parameter, "seed", "step"] + keys)
  for r in sorted(rows, key=lambda r: (float(r["value"]), int(r["seed"]))):
    writer.writerow([label, r["value"], r["seed"], r.get("step", "")]
                    + [repr(_number(r.get(k))) for k in keys])
  return buffer.getvalue()


def plot_metrics(rows: Sequence[Mapping[str, Any]], label: str,
                 parameter_label: str) -> Figure:
  """One panel per headline number against the grid value: seeds as dots, mean ± std bars."""
  groups = aggregate(rows)
  present = [(title, key) for title, key in HEADLINE if key in groups[0]["mean"]]
  ncols = 3
  nrows = max(1, math.ceil(len(present) / ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows + 0.8),
                           squeeze=False, layout="constrained")
  values = np.asarray([g["value"] for g in groups])
  log_x = bool(np.all(values > 0)) and values.max() / values.min() >= 4
  for ax, (title, key) in zip(axes.flat, present):
    for r in rows:
      ax.plot(float(r["value"]), _number(r.get(key)), ".", color="0.6", markersize=4)
    mean = np.asarray([g["mean"][key] for g in groups])
    std = np.nan_to_num(np.asarray([g["std"][key] for g in groups]))
    ax.errorbar(values, mean, yerr=std, fmt="o-", capsize=3, markersize=4)
    if log_x:
      ax.set_xscale("log")
      ax.set_xticks(values)
      ax.set_xticklabels([f"{v:g}" for v in values])
      ax.minorticks_off()
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(parameter_label)
    ax.spines[["top", "right"]].set_visible(False)
  for ax in list(axes.flat)[len(present):]:
    ax.set_visible(False)
  seeds = max(len(g["seeds"]) for g in groups)
  fig.suptitle(f"{label}\nmean ± std over {seeds} seed(s); grey dots: single models",
               fontsize=10)
  return fig


def plot_traversals(images: Mapping[float, str | Path], label: str, parameter_label: str,
                    seed: int | None = None) -> Figure:
  """The traversal figures of several grid values side by side (PNG files, one per value)."""
  if not images:
    raise ValueError("plot_traversals needs at least one traversal image; got none.")
  items = sorted(images.items())
  for _, path in items:
    if not Path(path).exists():
      raise FileNotFoundError(f"Traversal figure {path} does not exist.")
  ncols = min(3, len(items))
  nrows = math.ceil(len(items) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 5.0 * nrows + 0.6),
                           squeeze=False, layout="constrained")
  for ax, (value, path) in zip(axes.flat, items):
    ax.imshow(matplotlib.image.imread(path))
    ax.set_title(f"{parameter_label} = {value:g}" + ("" if seed is None else f", seed {seed}"),
                 fontsize=10)
    ax.axis("off")
  for ax in list(axes.flat)[len(items):]:
    ax.set_visible(False)
  fig.suptitle(f"Latent traversals (encoder mean of one image, dims by KL)\n{label}",
               fontsize=10)
  return fig


def published_markdown(method: str) -> str:
  """The published dSprites figures for ``method`` as markdown bullets ("" if none)."""
  entries = PUBLISHED.get(method) or {}
  if not entries:
    return ""
  lines = ["Published dSprites figures (best reported; Lin et al. 2020, Table 1):", ""]
  lines += [f"- {name}: {text}" for name, text in entries.items()]
  return "\n".join(lines) + "\n"
