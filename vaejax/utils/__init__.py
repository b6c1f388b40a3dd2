"""Small helpers every floor of vaejax uses, one per job.

``files`` (atomic writes: temp file, fsync, rename), ``checks`` (validation of integers and
numbers with one error message shape). They import nothing from the rest of vaejax, so any
module may use them.
"""
