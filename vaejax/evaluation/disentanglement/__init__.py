"""Disentanglement metrics, following disentanglement_lib's protocols and defaults.

Two layers:

* pure functions of arrays, codes ``(N, d)`` and integer factors ``(N, K)``:
  :func:`mig`, :func:`modularity`, :func:`explicitness`, :func:`dci`,
  :func:`sap`, and the classifier parts of the BetaVAE and FactorVAE scores
  (:func:`beta_vae_score`, :func:`factor_vae_score`) with their feature / vote
  builders; the unsupervised scores (:func:`unsupervised_scores`: Gaussian
  total and Wasserstein correlation, pairwise mutual information of the codes)
  and UDR across models (:func:`udr`);
* samplers ``compute_*`` that draw from a ground-truth dataset
  (:class:`GroundTruth`), encode with a representation function (the encoder
  mean) and call the pure layer; :func:`evaluate_all` runs any of
  :data:`METRICS` (the default set, dlib's six supervised metrics) or
  :data:`OPTIONAL_METRICS` (``"unsupervised"``) by name. :func:`compute_udr`
  encodes the same points with several models and ranks them.

Where a number can differ from disentanglement_lib's for the same inputs
(random streams, current scikit-learn defaults, the fast DCI model), the
function's docstring says so.
"""

from vaejax.evaluation.disentanglement.fixed_factor import (
    beta_vae_features,
    beta_vae_score,
    factor_vae_active_dims,
    factor_vae_score,
    factor_vae_votes,
)
from vaejax.evaluation.disentanglement.information import (
    discrete_entropy,
    discrete_mutual_info,
    discretize,
    mig,
    modularity,
    modularity_from_mutual_info,
)
from vaejax.evaluation.disentanglement.prediction import (
    DCI_MODELS,
    dci,
    disentanglement_completeness,
    explicitness,
    sap,
)
from vaejax.evaluation.disentanglement.sampling import (
    METRICS,
    OPTIONAL_METRICS,
    FactorGridGroundTruth,
    GroundTruth,
    beta_vae_sample,
    compute_beta_vae,
    compute_dci,
    compute_factor_vae,
    compute_mig,
    compute_modularity_explicitness,
    compute_sap,
    compute_udr,
    compute_unsupervised,
    evaluate_all,
    factor_vae_sample,
    represent,
    sample_codes_and_factors,
    udr_sample,
)
from vaejax.evaluation.disentanglement.udr_ranking import METHODS as UDR_METHODS
from vaejax.evaluation.disentanglement.udr_ranking import (
    average_ranks,
    lasso_similarity,
    relative_strength,
    spearman_similarity,
    standardize,
    udr,
)
from vaejax.evaluation.disentanglement.unsupervised import (
    gaussian_total_correlation,
    gaussian_wasserstein_correlation,
    mutual_info_score,
    unsupervised_scores,
)

__all__ = [
    "DCI_MODELS",
    "METRICS",
    "OPTIONAL_METRICS",
    "UDR_METHODS",
    "FactorGridGroundTruth",
    "GroundTruth",
    "average_ranks",
    "beta_vae_features",
    "beta_vae_sample",
    "beta_vae_score",
    "compute_beta_vae",
    "compute_dci",
    "compute_factor_vae",
    "compute_mig",
    "compute_modularity_explicitness",
    "compute_sap",
    "compute_udr",
    "compute_unsupervised",
    "dci",
    "discrete_entropy",
    "discrete_mutual_info",
    "discretize",
    "disentanglement_completeness",
    "evaluate_all",
    "explicitness",
    "factor_vae_active_dims",
    "factor_vae_sample",
    "factor_vae_score",
    "factor_vae_votes",
    "mig",
    "modularity",
    "modularity_from_mutual_info",
    "gaussian_total_correlation",
    "gaussian_wasserstein_correlation",
    "lasso_similarity",
    "mutual_info_score",
    "relative_strength",
    "represent",
    "sample_codes_and_factors",
    "sap",
    "spearman_similarity",
    "standardize",
    "udr",
    "udr_sample",
    "unsupervised_scores",
]
