"""vaejax: variational autoencoders in JAX/Flax.

Models return distribution parameters (`vaejax.types.VAEOutput`); objectives
(`vaejax.objectives`) are pure functions of them.
"""

__version__ = "0.1.0"
