"""The public names of vaejax.objectives (a package since the split) and where they live."""

import importlib

import pytest

# Every name the README and the rest of the repository use as ``objectives.NAME``, by the
# module that defines it.
PUBLIC = {
    "settings": ("LossSettings", "DEFAULT_SETTINGS", "validate_settings", "stack_settings",
                 "settings_in_axes"),
    "schedules": ("kl_weight", "capacity"),
    "elbo": ("elbo_terms", "elbo_loss", "free_bits_kl", "total_correlation", "summarize",
             "bits_per_dim"),
    "importance": ("ESTIMATORS", "log_weight_parts", "log_importance_weight", "log_mean_exp",
                   "importance_weighted_terms"),
    "importance_loss": ("validate_importance_settings", "iwae_loss"),
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_are_importable_from_the_package(module):
  package = importlib.import_module("vaejax.objectives")
  defining = importlib.import_module(f"vaejax.objectives.{module}")
  for name in PUBLIC[module]:
    assert getattr(package, name) is getattr(defining, name), name
    assert name in package.__all__, name


def test_all_lists_exactly_the_public_names():
  from vaejax import objectives
  assert sorted(objectives.__all__) == sorted(n for names in PUBLIC.values() for n in names)


def test_old_import_paths_keep_working():
  from vaejax.evaluation.likelihood import log_importance_weight
  from vaejax.objectives import LossSettings, elbo_loss, iwae_loss  # noqa: F401  (README)
  from vaejax.objectives.importance import log_importance_weight as defined
  assert log_importance_weight is defined

