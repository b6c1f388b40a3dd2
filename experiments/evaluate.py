r"""Likelihood evaluation of a trained run.

    python -m experiments.evaluate --workdir=DIR [--num_samples=1000] [--max_examples=N]

Restores the newest checkpoint in DIR (with DIR/config.json), estimates the test NLL with
K importance samples (IWAE), the ELBO, the gap between them, active units and the KL per
dimension (per level for hierarchical models), prints a markdown table and writes
DIR/likelihood.json.
"""

from absl import app, flags

from experiments import cli
from vaejax.evaluation import report

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory.", required=True)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "K importance samples per example.")
_CHUNK = flags.DEFINE_integer("chunk_size", 100, "Importance samples evaluated at once.")
_MAX = flags.DEFINE_integer("max_examples", None, "Evaluate at most this many examples.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the importance samples.")


def main(argv):
  results = cli.run_command(lambda: report.evaluate_workdir(
      _WORKDIR.value, num_samples=_NUM_SAMPLES.value, chunk_size=_CHUNK.value,
      max_examples=_MAX.value, seed=_SEED.value), argv)
  print(report.format_table(results))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
