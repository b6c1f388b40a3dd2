"""The sweep report's section for text models: KL over training and sample sentences.

:func:`vaejax.sweeps.report.write_report` adds it when the rows carry the ``text``
evaluator's numbers (``eval/ppl``): its table already holds KL, MI, active units, NLL and
perplexity per setting (mean ± std over seeds); this module adds

* ``kl_over_training.png``: the training batches' mean KL (nats, the KL before any
  warm-up weight) against the step, one line per setting (the mean over its seeds, the
  band from the lowest to the highest seed), from the sweep's ``metrics.jsonl``;
* a markdown section with, per setting, its first seed's greedy reconstructions and
  prior samples (``models/mNNN/figures/*.txt``, written by the evaluator) and the K of
  the NLL; for PTB, Texar's published numbers to compare with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt
import numpy as np

Figure = matplotlib.figure.Figure
Row = Mapping[str, Any]

# Texar's LSTM-VAE on PTB (asyml/texar examples/vae_text; REFERENCES.md): test NLL per
# sentence and perplexity.
PUBLISHED_PTB = "Texar's PTB LSTM-VAE: NLL 102.10 nats per sentence, PPL 105.48"
SAMPLE_LINES = 3  # sentences of each kind per setting in the report


def is_text(rows: Sequence[Row]) -> bool:
  """Whether the sweep's rows carry the text evaluator's numbers."""
  return any("eval/ppl" in row for row in rows)


def kl_histories(rows: Sequence[Row], history: Sequence[Row]) -> dict[int, tuple[np.ndarray,
                                                                                  np.ndarray]]:
  """Per model of ``rows``, ``(steps, batch-mean KL)`` of its logged training rows."""
  models = {int(r["model"]) for r in rows}
  curves: dict[int, list[tuple[int, float]]] = {m: [] for m in models}
  for row in history:
    model = row.get("model")
    if model in curves and "kl" in row and row["kl"] is not None:
      curves[model].append((int(row["step"]), float(row["kl"])))
  out = {}
  for model, points in curves.items():
    points = sorted(dict(points).items())  # a resumed run's last row per step
    out[model] = (np.asarray([s for s, _ in points]), np.asarray([k for _, k in points]))
  return out


def plot_kl_over_training(groups: Sequence[Row], members: Callable[[Row], list[int]],
                          curves: Mapping[int, tuple[np.ndarray, np.ndarray]],
                          label: str, setting_label: Callable[[Row], str]) -> Figure:
  """One line per setting: the mean over its seeds of the training KL at each logged step
  (steps every seed logged), the band between its lowest and highest seed."""
  fig, ax = plt.subplots(figsize=(7.0, 4.2))
  for g in groups:
    models = [m for m in members(g) if m in curves and curves[m][0].size]
    if not models:
      continue
    steps = sorted(set.intersection(*(set(curves[m][0].tolist()) for m in models)))
    values = np.asarray([[curves[m][1][np.searchsorted(curves[m][0], s)] for s in steps]
                         for m in models])
    line, = ax.plot(steps, values.mean(axis=0), label=setting_label(g), linewidth=1.4)
    ax.fill_between(steps, values.min(axis=0), values.max(axis=0), color=line.get_color(),
                    alpha=0.2, linewidth=0)
  ax.set_xlabel("step")
  ax.set_ylabel("KL(q(z|x) ‖ p(z)), training batch mean (nats)")
  ax.set_ylim(bottom=0)
  ax.legend(fontsize=7, frameon=False)
  ax.set_title(f"KL over training, mean over seeds (band: min–max)\n{label}", fontsize=8)
  ax.spines[["top", "right"]].set_visible(False)
  fig.tight_layout()
  return fig


def _sections(path: Path) -> dict[str, list[str]]:
  """The ``# title`` sections of an evaluator's text file (non-blank lines each)."""
  sections: dict[str, list[str]] = {}
  title = ""
  if not path.exists():
    return sections
  for line in path.read_text(encoding="utf-8").splitlines():
    if line.startswith("# "):
      title = line[2:]
    elif line.strip():
      sections.setdefault(title, []).append(line)
  return sections


def samples_markdown(groups: Sequence[Row], first_model: Callable[[Row], int | None],
                     root: Path, setting_label: Callable[[Row], str]) -> str:
  """Per setting, the first seed's first reconstructions and prior samples (markdown)."""
  lines = ["## Sample sentences", "",
           "The first seed of each setting: greedy decodes of the posterior mean of held-out "
           "sentences (x → decode), and decodes of z ~ N(0, I) sampled at temperature 1 "
           "(`models/mNNN/figures/*.txt` hold more, and the homotopies).", ""]
  for g in groups:
    model = first_model(g)
    if model is None:
      continue
    figures = root / "models" / f"m{model:03d}" / "figures"
    pairs = _sections(figures / "reconstructions.txt").get("", [])[:2 * SAMPLE_LINES]
    sampled = next((v for k, v in _sections(figures / "prior_samples.txt").items()
                    if k.startswith("sampled")), [])[:SAMPLE_LINES]
    if not pairs and not sampled:
      continue
    lines += [f"**{setting_label(g)}** (model m{model:03d})", ""]
    lines += [f"    {p}" for p in pairs]
    lines += ["    prior samples:"] + [f"    {s}" for s in sampled] + [""]
  return "\n".join(lines) + "\n"


def nll_note(rows: Sequence[Row], data_name: str) -> str:
  """Which K the NLLs use (and, for PTB, the published numbers to compare with)."""
  ks = sorted({int(r["eval/num_samples"]) for r in rows
               if "eval/num_samples" in r and r.get("eval/kl_per_dim")})  # models with z
  sentences = sorted({int(r["eval/num_sentences"]) for r in rows
                      if "eval/num_sentences" in r})
  bound = (f"importance-weighted bound with K = {', '.join(map(str, ks))} samples of "
           "q(z|x) (the language model's: exact)" if ks else "exact (no latent)")
  counts = ", ".join(map(str, sentences))
  text = (f"NLL: nats per sentence, {bound}, over all {counts} held-out sentences; PPL = "
          "exp(total NLL / scored tokens, <eos> included); MI: He et al.'s estimate over "
          "the whole split; KL and rate: one sample per sentence.")
  if data_name == "ptb":
    text += f" Published for comparison: {PUBLISHED_PTB}."
  return text + "\n"
