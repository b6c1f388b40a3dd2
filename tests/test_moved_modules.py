"""Modules that moved keep their old import paths: ``vaejax.plotting`` and
``vaejax.animation`` (now :mod:`vaejax.figures`, deprecated re-exports) and
``vaejax.evaluation.evaluators`` (now a package of one module per evaluator type)."""

import importlib

import pytest

from vaejax.figures import animation, grids, model_figures

# Every public name the old modules defined (read from them before the move).
OLD_PLOTTING = {
    grids: ("Figure", "tile_images", "plot_reconstructions", "plot_samples", "plot_traversals",
            "plot_interpolation", "plot_kl_per_dim", "plot_class_conditional_samples",
            "plot_style_transfer", "plot_latent_arithmetic", "save_figure",
            "plot_temperature_samples", "plot_kl_per_level"),
    model_figures: ("figure_arrays", "write_figures", "DEFAULT_ALPHAS",
                    "class_arithmetic_arrays", "style_arithmetic_arrays",
                    "write_class_arithmetic_figure", "write_style_arithmetic_figure",
                    "TEMPERATURES", "temperature_samples"),
}
OLD_ANIMATION = ("PRIOR_GIF", "POSTERIOR_GIF", "QUANTILE_CLIP", "triangle_cycle", "prior_sweep",
                 "posterior_sweep", "kl_order", "traversal_frames", "grid_frames", "save_gif",
                 "write_traversal_gifs", "read_gif")
OLD_EVALUATORS = ("Array", "Batch", "EvaluationError", "held_out_split", "check_held_out",
                  "held_out_batches", "Setup", "Stack", "Evaluator", "make_elbo_fn",
                  "summarize_elbo", "evaluate_elbo", "ElboEvaluator", "make_iwae_fn",
                  "IwaeEvaluator", "format_likelihood_table", "DisentanglementEvaluator",
                  "FiguresEvaluator", "make_posterior_fn", "encode_all",
                  "UnsupervisedEvaluator", "UdrEvaluator", "ArithmeticEvaluator", "EVALUATORS",
                  "register", "build")
BUILT_IN_TYPES = ("elbo", "iwae", "disentanglement", "figures", "unsupervised", "udr",
                  "arithmetic")


@pytest.mark.parametrize("old_name", ["vaejax.plotting", "vaejax.animation"])
def test_the_old_figure_modules_warn_that_they_moved(old_name):
  module = importlib.import_module(old_name)
  with pytest.warns(DeprecationWarning, match="vaejax.figures"):
    importlib.reload(module)


def test_every_old_plotting_name_is_the_new_object():
  from vaejax import plotting  # pylint: disable=g-import-not-at-top

  for new_module, names in OLD_PLOTTING.items():
    for name in names:
      assert getattr(plotting, name) is getattr(new_module, name), name
  assert plotting._PAD_VALUE == grids.PAD_VALUE == animation.PAD_VALUE == 0.5


def test_every_old_animation_name_is_the_new_object():
  from vaejax import animation as old  # pylint: disable=g-import-not-at-top

  for name in OLD_ANIMATION:
    assert getattr(old, name) is getattr(animation, name), name


def test_every_old_evaluators_name_still_imports_from_the_package():
  from vaejax.evaluation import evaluators  # pylint: disable=g-import-not-at-top

  missing = [name for name in OLD_EVALUATORS if not hasattr(evaluators, name)]
  assert not missing
  assert set(BUILT_IN_TYPES) <= set(evaluators.EVALUATORS)
  for kind in BUILT_IN_TYPES:  # one module per type, named after it
    module = importlib.import_module(f"vaejax.evaluation.evaluators.{kind}")
    assert evaluators.EVALUATORS[kind].__module__ == module.__name__


def test_the_failure_points_keep_their_old_path():
  from vaejax.training import faults as old  # pylint: disable=g-import-not-at-top
  from vaejax.utils import faults  # pylint: disable=g-import-not-at-top

  assert (old.point, old.ENV, old.POINTS) == (faults.point, faults.ENV, faults.POINTS)
