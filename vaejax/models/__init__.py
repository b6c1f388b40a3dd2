"""Flax Linen models of vaejax, built by name through a small registry.

``create_model(model_config, image_shape, num_classes=None)`` returns an unbound module
whose forward pass gives a :class:`vaejax.types.VAEOutput`. Built-in names: "mlp_vae",
"conv_vae", "mlp_cvae", "conv_cvae", "hvae" (the top-down hierarchical VAE) and
"deep_hvae" (the deep conv hierarchical VAE of :mod:`vaejax.models.deep_hierarchical`);
for token sequences (``create_model(config, dataset.spec)``) "lstm_vae" and "lstm_lm"
(:mod:`vaejax.models.sequence`).
A module that defines more models registers them with ``@register(name, **extra_defaults)``
and is imported below so they are available. :mod:`vaejax.models.codec` encodes and decodes
with a model's parameters (``codec.encode(model, params, x)``, ``codec.decode_mean``, ...).
"""

from vaejax.models import codec  # noqa: F401  (encode / decode with a model's parameters)
from vaejax.models import deep_hierarchical  # noqa: F401  (registers "deep_hvae")
from vaejax.models import hierarchical  # noqa: F401  (registers "hvae")
from vaejax.models import sequence  # noqa: F401  (registers "lstm_vae", "lstm_lm")
from vaejax.models.deep_hierarchical import DeepHierarchicalVAE
from vaejax.models.hierarchical import HierarchicalVAE
from vaejax.models.registry import MODELS, create_model, register
from vaejax.models.sequence import SequenceVAE
from vaejax.models.vae import LIKELIHOODS, VAE

__all__ = [
    "LIKELIHOODS", "MODELS", "VAE", "DeepHierarchicalVAE", "HierarchicalVAE", "SequenceVAE",
    "create_model", "register",
]
