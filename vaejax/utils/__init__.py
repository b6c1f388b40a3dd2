"""Small helpers every floor of vaejax uses, one per job.

``files`` (atomic writes: temp file, fsync, rename), ``checks`` (validation of integers and
numbers with one error message shape), ``progress`` (a bar on a terminal, log lines
elsewhere). They import nothing from the rest of vaejax, so any module may use them.
"""
