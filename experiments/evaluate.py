r"""Evaluates a finished run or sweep with the evaluators of its config.

    python -m experiments.evaluate --workdir=DIR [--evals=iwae] [--num_samples=1000] \
        [--chunk_size=100] [--max_examples=N] [--seed=0]

Restores the newest checkpoint(s) in DIR (with DIR/config.json) and runs the named
evaluators of ``config.evals`` on every model, on the same held-out data and keys as
during training: by default ``iwae`` (test NLL with K importance samples, the ELBO, their
gap, active units, KL per dimension or level; ``likelihood.json`` per model, and a
markdown table), or e.g. ``--evals=disentanglement,figures``. The IWAE flags override
that evaluator's config values.
"""

from absl import app, flags

from experiments import cli
from vaejax.evaluation import evaluators
from vaejax.training import loop

_WORKDIR = flags.DEFINE_string("workdir", None, "A run's or sweep's directory.", required=True)
_EVALS = flags.DEFINE_list("evals", ["iwae"], "Evaluators of config.evals to run.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "IWAE: K importance samples.")
_CHUNK = flags.DEFINE_integer("chunk_size", None, "IWAE: importance samples evaluated at once.")
_MAX = flags.DEFINE_integer("max_examples", None, "IWAE: evaluate at most this many examples.")
_SEED = flags.DEFINE_integer("seed", None, "IWAE: seed of the importance samples.")


def main(argv):
  iwae = {k: v for k, v in (("num_samples", _NUM_SAMPLES.value), ("chunk_size", _CHUNK.value),
                             ("max_examples", _MAX.value), ("seed", _SEED.value))
          if v is not None}
  overrides = {"iwae": iwae} if iwae and "iwae" in _EVALS.value else {}
  results = cli.run_command(lambda: loop.evaluate_workdir(
      _WORKDIR.value, _EVALS.value, overrides=overrides), argv)
  for result in results:
    if "iwae" in result:
      if len(results) > 1:
        print(f"\nmodel {result['model']}: {result['point']}")
      print(evaluators.format_likelihood_table(result["iwae"]))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
