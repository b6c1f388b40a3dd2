r"""Compares the test NLL of two evaluated runs on the same examples (paired).

    python -m experiments.compare_nll --a=runs/deep_hvae --b=runs/vae

Reads each run's ``likelihood.json`` (written by ``python -m experiments.evaluate``, with
the per-example IWAE bounds on the same held-out examples) and prints the NLL of each, the
mean per-example difference and its paired standard error: how many nats A is better than
B, and whether that exceeds the noise.
"""

import json
from pathlib import Path

from absl import app, flags

from experiments import cli
from vaejax.evaluation import likelihood

_A = flags.DEFINE_string("a", None, "A run (or model) directory holding likelihood.json.",
                         required=True)
_B = flags.DEFINE_string("b", None, "The run to compare with.", required=True)


def _load(directory: str) -> dict:
  path = Path(directory) / "likelihood.json"
  if not path.is_file():
    raise FileNotFoundError(f"No likelihood.json in {Path(directory).resolve()}; run "
                            "python -m experiments.evaluate --workdir=... first.")
  results = json.loads(path.read_text())
  if "iwae_per_example" not in results:
    raise ValueError(f"{path} has no per-example bounds; re-run experiments.evaluate.")
  return results


def main(argv):
  def command():
    a, b = _load(_A.value), _load(_B.value)
    if (a["dataset"], a["split"], a["num_examples"]) != (b["dataset"], b["split"],
                                                         b["num_examples"]):
      raise ValueError("The two runs were evaluated on different examples: "
                       f"{a['dataset']}/{a['split']} ({a['num_examples']}) vs "
                       f"{b['dataset']}/{b['split']} ({b['num_examples']}).")
    return a, b, likelihood.paired_difference(a["iwae_per_example"], b["iwae_per_example"])

  a, b, diff = cli.run_command(command, argv)
  print(f"A {a['model']}: NLL {a['iwae_nll']:.2f} ± {a['iwae_nll_stderr']:.2f} nats "
        f"(IWAE K={a['num_importance_samples']})")
  print(f"B {b['model']}: NLL {b['iwae_nll']:.2f} ± {b['iwae_nll_stderr']:.2f} nats "
        f"(IWAE K={b['num_importance_samples']})")
  print(f"A − B log-likelihood: {diff['mean_difference']:+.2f} ± {diff['paired_stderr']:.2f} "
        f"nats (paired, {diff['num_examples']} examples; z = {diff['z']:.1f})")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
