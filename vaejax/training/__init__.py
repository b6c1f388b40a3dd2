"""Training: the one loop for M ≥ 1 models and its parts.

``state`` (train states, stacks), ``optimizer`` (Adam's direction, per-model rates),
``step`` (the pure train step, masking), ``mesh`` and ``memory`` (placement and budgets),
``executor`` (programs: unbatched, vmapped or chunked), ``checkpoint`` (orbax save and
restore; ``checkpoint_failures``: how its failures read), ``writers`` (JSONL, TensorBoard,
progress), ``interrupt`` (stopping on SIGTERM/SIGINT); the loop's parts: ``plan`` (all that
is decided before compiling), ``resume`` (the one restore path, the one save), ``programs``
(a group's executor, fitted in memory), ``periodic`` (when to log, evaluate, checkpoint),
``steps`` (stepping a group), ``unfinished`` (evaluations a stop cut short, finished on
resume), ``rows`` (what is logged), ``finished`` (evaluating a finished run) and ``loop``
(:func:`vaejax.training.loop.train`, :func:`~vaejax.training.loop.train_and_evaluate`).

The submodules are imported on use, so the step alone (``vaejax.training.step``) loads
without the config and data machinery (benchmarks run it on bare accelerator hosts).
"""
