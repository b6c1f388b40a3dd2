r"""The sweep report: mean ± std over seeds per point, rate–distortion, KL per dimension,
metrics against the swept key, traversals side by side. One module for every sweep.

Input: the per-model rows of ``results.jsonl`` (:func:`vaejax.training.loop.train`):
``model``, ``point`` (the model's grid values by dotted key), ``active``, its last logged
training metrics and its latest evaluations (``eval/*``, ``disentanglement/*``,
``iwae/*``, ...). Models whose points differ only in ``seed`` form one *setting*; its
numbers are the mean and the sample standard deviation (ddof = 1) over the seeds with a
finite value; with one seed the spread is undefined and shown as "—". Diverged (masked)
models are counted and left out of the means.

* Rate R = E_x KL(q(z|x) ‖ p(z)) and distortion D = −E_x E_q[log p(x|z)], in nats
  (held-out when the sweep evaluated, else the last training batch's); the
  rate–distortion plot draws one point per setting with ±1 std bars (Alemi et al. 2018).
* The KL-per-dimension heatmap shows each setting's models' KL per dimension, sorted
  within each model before averaging over seeds (dimension j of one seed has nothing to
  do with dimension j of another).
* With one swept key besides ``seed``, ``metrics_vs_<key>.png`` plots every headline
  number against it (seeds as dots, mean ± std bars).
* Text models (rows with the ``text`` evaluator's ``eval/ppl``): NLL, perplexity and MI
  join the table, and :mod:`vaejax.sweeps.text_report` adds the KL over training of every
  setting (``kl_over_training.png``) and sample sentences.

Every output carries the budget label (steps, batch, learning rate, seeds; for the
dSprites disentanglement study whether it is disentanglement_lib's budget).
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
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np

from vaejax.figures import grids
from vaejax.sweeps import text_report
from vaejax.utils import files

Figure = matplotlib.figure.Figure
ACTIVE_KL = 0.01  # nats: a dimension below this mean KL counts as collapsed in the heatmap
# disentanglement_lib's training budget (Locatello et al. 2019).
DLIB_BUDGET = {"num_steps": 300_000, "batch_size": 64, "learning_rate": 1e-4}

# (column title, row key or key suffix, fallback key, sign, digits): the headline numbers.
# Distortion is −recon; "…/" keys match any evaluator name ("disentanglement/mig/...").
HEADLINE = (
    ("ELBO", "eval/elbo", "elbo", 1.0, 1),
    ("rate (KL)", "eval/kl", "kl", 1.0, 1),
    ("distortion", "eval/recon", "recon", -1.0, 1),
    ("active units", "eval/active_units", None, 1.0, 1),
    ("IWAE NLL", "…/iwae_nll", None, 1.0, 2),
    ("MI", "eval/mi", None, 1.0, 2),  # the text evaluator's (sequence models)
    ("NLL", "eval/nll", None, 1.0, 2),
    ("PPL", "eval/ppl", None, 1.0, 2),
    ("BetaVAE", "…/beta_vae/eval_accuracy", None, 1.0, 2),
    ("FactorVAE", "…/factor_vae/eval_accuracy", None, 1.0, 2),
    ("MIG", "…/mig/discrete_mig", None, 1.0, 2),
    ("DCI dis.", "…/dci/disentanglement", None, 1.0, 2),
    ("SAP", "…/sap/sap_score", None, 1.0, 2),
    ("Modularity", "…/modularity_explicitness/modularity_score", None, 1.0, 2),
    ("TC (Gauss.)", "…/gaussian_total_correlation", None, 1.0, 2),
    ("MI score", "…/mutual_info_score", None, 1.0, 2),
    ("UDR", "…/udr", None, 1.0, 2),
)
_IDENTITY = ("model", "point", "group", "active", "masked_at", "step", "steps_per_sec")

# Published dSprites figures by swept key (REFERENCES.md; secondary source: Lin et al.
# 2020, Table 1, best reported results, not per value). Higgins et al.'s 99.23% BetaVAE
# score is unverified.
PUBLISHED = {
    "loss.beta": {"β-VAE": "FactorVAE 0.63 ± 0.10, MIG 0.21",
                  "VAE (β = 1)": "FactorVAE 0.63 ± 0.06, MIG 0.10"},
    "loss.tc_beta": {"β-TCVAE": "FactorVAE 0.62 ± 0.07, MIG 0.45"},
}


def _number(value: Any) -> float:
  if isinstance(value, bool):
    return math.nan
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _resolve(row: Mapping[str, Any], key: str) -> Any:
  if not key.startswith("…/"):
    return row.get(key)
  suffix = key[1:]
  for k, v in row.items():
    if k.endswith(suffix):
      return v
  return None


def headline_value(row: Mapping[str, Any], spec: tuple) -> float:
  """One headline number of a row (NaN when absent), with its fallback and sign."""
  _, key, fallback, sign, _ = spec
  for k in (key, fallback):
    if k is not None:
      value = _resolve(row, k)
      if value is not None:
        return sign * _number(value)
  return math.nan


def swept_keys(rows: Sequence[Mapping[str, Any]]) -> tuple[str, ...]:
  """The point keys whose values differ between rows, ``seed`` excluded (grid order)."""
  keys: list[str] = []
  for row in rows:
    for k in row.get("point", {}):
      if k != "seed" and k not in keys:
        keys.append(k)
  return tuple(k for k in keys if len({repr(r["point"].get(k)) for r in rows}) > 1) or tuple(
      k for k in keys)


def _setting(row: Mapping[str, Any], keys: Sequence[str]) -> tuple:
  return tuple(row.get("point", {}).get(k) for k in keys)


def _kl_per_dim(row: Mapping[str, Any]) -> np.ndarray | None:
  value = row.get("eval/kl_per_dim", row.get("kl_per_dim"))
  return None if value is None else np.asarray(value, np.float64)


def numeric_keys(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """Every scalar numeric key of the rows but identity fields, sorted."""
  keys = set()
  for row in rows:
    keys |= {k for k, v in row.items() if k not in _IDENTITY and not isinstance(v, bool)
             and isinstance(v, (int, float))}
  return sorted(keys)


def aggregate(rows: Sequence[Mapping[str, Any]],
              keys: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """One dict per setting (points equal but for ``seed``), in order of first appearance.

  Each has ``setting`` (``{key: value}``), ``seeds``, ``num_masked``, ``mean``/``std``/``n``
  of every headline number (by title) and every numeric key, over the active seeds with a
  finite value (std: ddof = 1, NaN for fewer than two), ``kl_sorted`` (the mean over seeds
  of each model's KL per dimension sorted in decreasing order) and ``alive_dims``.

  Raises:
    ValueError: no rows, or a row without ``point``.
  """
  if not rows:
    raise ValueError("aggregate needs at least one result row; got none.")
  for row in rows:
    if "point" not in row:
      raise ValueError(f"Every row needs its 'point'; got keys {sorted(row)}.")
  keys = tuple(swept_keys(rows) if keys is None else keys)
  groups: dict[str, list[Mapping[str, Any]]] = {}
  for row in rows:
    groups.setdefault(repr(_setting(row, keys)), []).append(row)
  names = numeric_keys(rows)
  out = []
  for members in groups.values():
    alive = [r for r in members if r.get("active", True)]
    entry: dict[str, Any] = {
        "setting": dict(zip(keys, _setting(members[0], keys))),
        "seeds": [r.get("point", {}).get("seed") for r in members],
        "num_masked": len(members) - len(alive), "mean": {}, "std": {}, "n": {}}
    columns = [(spec[0], lambda r, s=spec: headline_value(r, s)) for spec in HEADLINE]
    columns += [(k, lambda r, k=k: _number(r.get(k))) for k in names]
    for name, get in columns:
      x = np.asarray([get(r) for r in alive], np.float64)
      x = x[np.isfinite(x)]
      entry["n"][name] = int(x.size)
      entry["mean"][name] = float(x.mean()) if x.size else math.nan
      entry["std"][name] = float(x.std(ddof=1)) if x.size > 1 else math.nan
    kls = [v for v in (_kl_per_dim(r) for r in alive) if v is not None]
    same = bool(kls) and len({k.shape for k in kls}) == 1
    entry["kl_sorted"] = (np.mean([np.sort(k)[::-1] for k in kls], axis=0).tolist()
                          if same else None)
    entry["alive_dims"] = (float(np.mean([(k > ACTIVE_KL).sum() for k in kls]))
                           if kls else math.nan)
    out.append(entry)
  return out


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
  """``"0.63 ± 0.10"``; ``"0.63 ± —"`` when the spread is undefined (one seed); ``"—"``
  for no value."""
  if math.isnan(mean):
    return "—"
  spread = "—" if math.isnan(std) else f"{std:.{digits}f}"
  return f"{mean:.{digits}f} ± {spread}"


def _format_value(value: Any) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def setting_label(entry: Mapping[str, Any]) -> str:
  return ", ".join(f"{k}={_format_value(v)}" for k, v in entry["setting"].items()) or "all"


def budget_label(config: Any, num_seeds: int, swept: Sequence[str] = ()) -> str:
  """The label every output carries: the budget (keys the grid sweeps say so), and for a
  dSprites disentanglement study whether it is disentanglement_lib's."""
  def value(key, text):
    return "swept" if key in swept else text
  budget = (f"{value('num_steps', config.num_steps)} steps, batch "
            f"{value('batch_size', config.batch_size)}, learning rate "
            f"{value('learning_rate', f'{config.learning_rate:g}')}, {num_seeds} "
            f"seed{'s' if num_seeds != 1 else ''}")
  studies = [g for g in config.evals.values()
             if g["type"] == "disentanglement" and (g["every"] or g["at_end"])]
  if not studies or "dsprites" not in config.data.name:
    return budget
  at_dlib = all(config[k] == v and k not in swept for k, v in DLIB_BUDGET.items()) and all(
      g["preset"] == "dlib" for g in studies)
  if at_dlib:
    return f"DLIB BUDGET: {budget}, dlib metric sample counts"
  return (f"REDUCED BUDGET: {budget}, metric preset {studies[0]['preset']!r} — not the "
          "dlib budget (300k steps, batch 64, Adam 1e-4, dlib metric sample counts)")


def _present(groups: Sequence[Mapping[str, Any]]) -> list[tuple]:
  return [spec for spec in HEADLINE if any(g["n"][spec[0]] for g in groups)]


def table_markdown(groups: Sequence[Mapping[str, Any]], label: str, details: str = "") -> str:
  """A markdown table (headline numbers, mean ± std over seeds) under the budget label."""
  keys = list(groups[0]["setting"])
  present = _present(groups)
  head = keys + ["seeds", "masked"] + [spec[0] for spec in present]
  lines = [f"**{label}**", ""]
  if details:
    lines += [details, ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for g in groups:
    cells = [_format_value(v) for v in g["setting"].values()]
    cells += [str(len(g["seeds"])), str(g["num_masked"])]
    for title, *_, digits in present:
      cells.append(format_mean_std(g["mean"][title], g["std"][title], digits))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def table_csv(groups: Sequence[Mapping[str, Any]], label: str) -> str:
  """CSV: one row per setting; ``budget`` (the label), the setting, then every mean and std."""
  keys = list(groups[0]["setting"])
  names = list(groups[0]["mean"])
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["budget", *keys, "n_seeds", "n_masked"]
                  + [f"{n}_{s}" for n in names for s in ("mean", "std")])
  for g in groups:
    writer.writerow([label, *g["setting"].values(), len(g["seeds"]), g["num_masked"]]
                    + [repr(g[s][n]) for n in names for s in ("mean", "std")])
  return buffer.getvalue()


def runs_csv(rows: Sequence[Mapping[str, Any]], label: str) -> str:
  """CSV: one row per model, its point and every numeric result (for re-analysis)."""
  keys = sorted({k for r in rows for k in r.get("point", {})})
  names = [spec[0] for spec in HEADLINE] + numeric_keys(rows)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(["budget", "model", *keys, "active"] + names)
  for r in rows:
    values = [headline_value(r, spec) for spec in HEADLINE]
    values += [_number(r.get(k)) for k in numeric_keys(rows)]
    writer.writerow([label, r.get("model"), *(r["point"].get(k, "") for k in keys),
                     r.get("active", True)] + [repr(v) for v in values])
  return buffer.getvalue()


def plot_rate_distortion(groups: Sequence[Mapping[str, Any]], label: str) -> Figure:
  """Distortion (−E log p(x|z)) against rate (E KL), one point per setting, ±1 std bars."""
  fig, ax = plt.subplots(figsize=(6.0, 4.5))
  for g in groups:
    r, d = g["mean"]["rate (KL)"], g["mean"]["distortion"]
    if math.isnan(r) or math.isnan(d):
      continue
    ax.errorbar(r, d, xerr=np.nan_to_num(g["std"]["rate (KL)"]),
                yerr=np.nan_to_num(g["std"]["distortion"]), fmt="o", capsize=3, markersize=5)
    ax.annotate(setting_label(g), (r, d), textcoords="offset points", xytext=(5, 4),
                fontsize=8)
  ax.set_xlabel("rate: mean KL(q(z|x) ‖ p(z)) (nats)")
  ax.set_ylabel("distortion: −mean log p(x|z) (nats)")
  seeds = max((len(g["seeds"]) for g in groups), default=0)
  ax.set_title(f"Rate–distortion, one point per setting ({seeds} seed(s) each; bars ±1 std)"
               f"\n{label}", fontsize=8)
  ax.spines[["top", "right"]].set_visible(False)
  fig.tight_layout()
  return fig


def plot_kl_heatmap(groups: Sequence[Mapping[str, Any]], label: str,
                    threshold: float = ACTIVE_KL) -> Figure:
  """Each setting's KL spectrum: mean KL (nats) of its models' dimensions by rank.

  Rows are settings, columns the rank of a dimension in its model (1 = largest KL),
  values ``kl_sorted`` of :func:`aggregate`; cells below ``threshold`` are grey, cells past
  a setting's latent size blank.

  Raises:
    ValueError: no setting has ``kl_sorted``.
  """
  rows = [g for g in groups if g.get("kl_sorted") is not None]
  if not rows:
    raise ValueError("plot_kl_heatmap needs kl_sorted for at least one setting.")
  width = max(len(g["kl_sorted"]) for g in rows)  # settings may differ in latent size
  kl = np.full((len(rows), width), np.nan)
  for i, g in enumerate(rows):
    kl[i, :len(g["kl_sorted"])] = g["kl_sorted"]
  num, dims = kl.shape
  fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * dims + 2.5), max(2.5, 0.42 * num + 1.4)))
  image = ax.imshow(np.log10(np.maximum(kl, 1e-3)), cmap="viridis", aspect="auto",
                    vmin=-3, vmax=max(1.0, float(np.log10(max(np.nanmax(kl), 1e-3)))))
  for i in range(num):
    for j in range(dims):
      value = kl[i, j]
      if np.isnan(value):  # a setting with fewer latent dimensions
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="white"))
        continue
      if value < threshold:
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="lightgrey"))
      ax.text(j, i, f"{value:.2f}" if value < 10 else f"{value:.0f}", ha="center",
              va="center", fontsize=6, color="black" if value < threshold else "white")
  ax.set_yticks(np.arange(num))
  ax.set_yticklabels([f"{setting_label(g)}  ({g['alive_dims']:.3g}/{len(g['kl_sorted'])} alive)"
                      for g in rows], fontsize=8)
  ax.set_xticks(np.arange(dims))
  ax.set_xticklabels([str(j + 1) for j in range(dims)], fontsize=7)
  ax.set_xlabel("latent dimensions, sorted by KL within each model (rank)", fontsize=8)
  fig.colorbar(image, ax=ax).set_label("log10 mean KL (nats)")
  ax.set_title(f"KL per latent dimension (nats), sorted per model, averaged over seeds; "
               f"grey: below {threshold:g}\n{label}", fontsize=8)
  fig.tight_layout()
  return fig


def plot_metrics(rows: Sequence[Mapping[str, Any]], key: str, label: str) -> Figure:
  """One panel per headline number against the swept ``key``: seeds as dots, mean ± std."""
  groups = aggregate(rows, (key,))
  present = _present(groups)
  ncols = 3
  nrows = max(1, math.ceil(len(present) / ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows + 0.8),
                           squeeze=False, layout="constrained")
  values = np.asarray([_number(g["setting"][key]) for g in groups])
  log_x = bool(np.all(values > 0)) and values.max() / values.min() >= 4
  for ax, spec in zip(axes.flat, present):
    title = spec[0]
    for r in rows:
      if r.get("active", True):
        ax.plot(_number(r["point"].get(key)), headline_value(r, spec), ".", color="0.6",
                markersize=4)
    mean = np.asarray([g["mean"][title] for g in groups])
    std = np.nan_to_num(np.asarray([g["std"][title] for g in groups]))
    ax.errorbar(values, mean, yerr=std, fmt="o-", capsize=3, markersize=4)
    if log_x:
      ax.set_xscale("log")
      ax.set_xticks(values)
      ax.set_xticklabels([f"{v:g}" for v in values])
      ax.minorticks_off()
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(key)
    ax.spines[["top", "right"]].set_visible(False)
  for ax in list(axes.flat)[len(present):]:
    ax.set_visible(False)
  seeds = max(len(g["seeds"]) for g in groups)
  fig.suptitle(f"{label}\nmean ± std over {seeds} seed(s); grey dots: single models",
               fontsize=9)
  return fig


def plot_traversals(images: Sequence[tuple[str, str | Path]], label: str) -> Figure:
  """Traversal figures of several settings side by side (``(title, png path)`` pairs)."""
  if not images:
    raise ValueError("plot_traversals needs at least one traversal image; got none.")
  for _, path in images:
    if not Path(path).exists():
      raise FileNotFoundError(f"Traversal figure {path} does not exist.")
  ncols = min(3, len(images))
  nrows = math.ceil(len(images) / ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(5.0 * ncols, 5.0 * nrows + 0.6),
                           squeeze=False, layout="constrained")
  for ax, (title, path) in zip(axes.flat, images):
    ax.imshow(matplotlib.image.imread(path))
    ax.set_title(title, fontsize=10)
    ax.axis("off")
  for ax in list(axes.flat)[len(images):]:
    ax.set_visible(False)
  fig.suptitle(f"Latent traversals (encoder mean of one image, dims by KL)\n{label}",
               fontsize=10)
  return fig


def published_markdown(keys: Sequence[str], config: Any) -> str:
  """The published dSprites figures for a swept key as markdown bullets ("" if none)."""
  if "dsprites" not in config.data.name:
    return ""
  entries = {}
  for key in keys:
    entries.update(PUBLISHED.get(key, {}))
  if not entries:
    return ""
  lines = ["Published dSprites figures (best reported; Lin et al. 2020, Table 1):", ""]
  lines += [f"- {name}: {text}" for name, text in entries.items()]
  return "\n".join(lines) + "\n"


def _members(rows: Sequence[Mapping[str, Any]], keys: Sequence[str],
             group: Mapping[str, Any]) -> list[int]:
  """The models of a setting of :func:`aggregate` (in row order)."""
  return [int(r["model"]) for r in rows
          if _setting(r, keys) == tuple(group["setting"].values())]


def write_report(rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike,
                 config: Any, history: Sequence[Mapping[str, Any]] = ()) -> list[Path]:
  """Writes the report of a sweep's ``rows`` to ``out_dir``; returns the paths written.

  ``results.md`` and ``results.csv`` (mean ± std per setting), ``runs.csv`` (one row per
  model), ``summary.json``, ``rate_distortion.png``, ``kl_per_dim.png`` (when rows have
  KL per dimension), ``metrics_vs_<key>.png`` (one swept key besides seed) and
  ``traversals.png`` (the first seed of each setting, when the models wrote traversals);
  for text models ``kl_over_training.png`` and sample sentences in ``results.md``
  (:mod:`vaejax.sweeps.text_report`).

  Args:
    rows: ``results.jsonl`` rows.
    out_dir: the report directory.
    config: the sweep's training config (for the budget label).
    history: the sweep's logged rows (``metrics.jsonl``), for curves over training.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  keys = swept_keys(rows)
  groups = aggregate(rows, keys)
  num_seeds = max(len(g["seeds"]) for g in groups)
  label = budget_label(config, num_seeds, keys)
  expected = f"Models: {len(rows)}; settings: {len(groups)}; data: {config.data.name}; " \
             f"model: {config.model.name}."
  markdown = (f"# Sweep over {', '.join(keys) or 'seeds'}\n\n"
              + table_markdown(groups, label, expected) + "\n"
              + published_markdown(keys, config))
  root = out_dir.parent
  is_text = text_report.is_text(rows)
  if is_text:
    markdown += "\n" + text_report.nll_note(rows, config.data.name) + "\n" + (
        text_report.samples_markdown(groups, lambda g: next(iter(_members(rows, keys, g)),
                                                            None), root, setting_label))
  texts = {"results.md": markdown, "results.csv": table_csv(groups, label),
           "runs.csv": runs_csv(rows, label),
           "summary.json": json.dumps({"label": label, "settings": groups}, indent=1) + "\n"}
  written = []
  for name, text in texts.items():
    written.append(files.atomic_write_text(out_dir / name, text))
  written.append(grids.save_figure(plot_rate_distortion(groups, label),
                                   out_dir / "rate_distortion.png"))
  if any(g.get("kl_sorted") is not None for g in groups):
    written.append(grids.save_figure(plot_kl_heatmap(groups, label),
                                     out_dir / "kl_per_dim.png"))
  if len(keys) == 1 and len(groups) > 1:
    name = keys[0].split(".")[-1]
    written.append(grids.save_figure(plot_metrics(rows, keys[0], label),
                                     out_dir / f"metrics_vs_{name}.png"))
  if is_text:
    curves = text_report.kl_histories(rows, history)
    written.append(grids.save_figure(text_report.plot_kl_over_training(
        groups, lambda g: _members(rows, keys, g), curves, label, setting_label),
        out_dir / "kl_over_training.png"))
  images = []
  for g in groups:
    first = next((r for r in rows if _setting(r, keys) == tuple(g["setting"].values())), None)
    path = root / "models" / f"m{int(first['model']):03d}" / "figures" / "traversals.png"
    if path.exists():
      images.append((f"{setting_label(g)}, seed {first['point'].get('seed', '—')}", path))
  if images:
    written.append(grids.save_figure(plot_traversals(images, label),
                                     out_dir / "traversals.png", dpi=90))
  return written
