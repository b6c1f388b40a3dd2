"""Small helpers every floor of vaejax uses, one per job.

``files`` (atomic writes: temp file, fsync, rename; a full disk as one error), ``checks``
(validation of integers and numbers with one error message shape), ``progress`` (a bar on
a terminal, log lines elsewhere), ``stopping`` (SIGTERM/SIGINT recorded, then acted on
between units of work), ``faults`` (failure points for the tests that kill runs). They
import nothing from the rest of vaejax, so any module may use them.
"""
