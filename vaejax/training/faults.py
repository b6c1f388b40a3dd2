"""Moved to :mod:`vaejax.utils.faults` (atomic writes have failure points too); this path
keeps working for the tests and tools that import it."""

from vaejax.utils.faults import ACTIONS, ENV, POINTS, point

__all__ = ["ACTIONS", "ENV", "POINTS", "point"]
