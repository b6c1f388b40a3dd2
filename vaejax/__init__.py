"""vaejax: variational autoencoders in JAX/Flax.

Models return distribution parameters (`vaejax.types.VAEOutput`); objectives
(`vaejax.objectives`) are pure functions of them. `vaejax.load_run(workdir, model=i |
point={...})` loads one trained model of a run or sweep (imported on first use, so
`import vaejax` stays light).
"""

__version__ = "0.1.0"

__all__ = ["load_run"]


def __getattr__(name):
  if name == "load_run":
    from vaejax.training.runs import load_run  # pylint: disable=g-import-not-at-top
    return load_run
  raise AttributeError(f"module 'vaejax' has no attribute {name!r}")


def __dir__():
  return sorted([*globals(), "load_run"])
