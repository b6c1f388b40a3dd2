"""Sweeps: the grid over dotted config keys (``grid``) and the report of every sweep (``report``).

Pure logic with no training imports; :func:`vaejax.training.loop.train` runs the grid.
"""
