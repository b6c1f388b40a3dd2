"""Where a group starts and how it is saved: the one restore path and the one save.

:func:`restore_or_init` gives a group's starting :class:`Start`: its newest checkpoint that
restores (after the plan's probe, :func:`vaejax.training.plan.with_resume_steps`, found one
that agrees with the run's config), or a fresh stack. The loop (training and the
finished-run shortcut) and :func:`vaejax.training.finished.evaluate_workdir` all start
here. :func:`save_checkpoint` writes a group's state with its metadata (the data
position, the run's config and grid) and is the only place the loop saves. The orbax
mechanics (fallback past corrupt checkpoints, older layouts) are
:mod:`vaejax.training.checkpoint`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import vaejax
from vaejax import config as config_lib
from vaejax.training import checkpoint as checkpoint_lib
from vaejax.training.plan import GroupPlan, Plan
from vaejax.training.state import StackState, init_stack, restore_target


class Start(NamedTuple):
  """Where a group starts.

  Attributes:
    state: the stack's state (device arrays): restored, or freshly initialised.
    step: the restored checkpoint's step; 0 for a fresh stack.
    data_position: batches the models have consumed (0 for a fresh stack).
    finished: the checkpoint is at (or past) the group's last step: nothing to train.
  """

  state: StackState
  step: int
  data_position: int
  finished: bool

  @property
  def restored(self) -> bool:
    return self.step > 0


def restore_or_init(group: GroupPlan, saved_config: Mapping[str, Any], *,
                    init: bool = True) -> Start | None:
  """The group's newest checkpoint that restores, else (with ``init``) a fresh stack.

  Restores only where the plan found a resumable checkpoint (``group.resume_step``, whose
  config the probe checked); a checkpoint that does not read is set aside and the next
  older one is used, its config checked against ``saved_config`` (the run's, as a plain
  dict).

  Args:
    group: the planned group, with its ``resume_step``.
    saved_config: the run's config as saved (:attr:`vaejax.training.plan.Plan.saved_config`).
    init: initialise a fresh stack when nothing restores; False returns None instead
      (evaluating a finished run).

  Raises:
    ConfigError: the restored checkpoint was written by another config.
    LayoutMismatch: it holds another train-state layout.
  """
  if group.resume_step is not None:
    target = restore_target(group.model, group.optimizer, len(group.models), group.spec,
                            conditional=group.traits.conditional)
    restored = checkpoint_lib.restore_latest(group.checkpoint_dir, target)
    if restored is not None:
      state, meta, step = restored
      if step != group.resume_step:  # an older one than the probe checked: check it too
        config_lib.check_resumable(meta["config"], saved_config,
                                   str(group.checkpoint_dir / str(step)))
      return Start(state, int(step), int(meta["data_position"]),
                   finished=step >= group.config.num_steps)
  if not init:
    return None
  state = init_stack(group.model, group.optimizer, group.seeds, group.spec,
                     conditional=group.traits.conditional)
  return Start(state, 0, 0, finished=False)


def checkpoint_meta(run: Plan, group: GroupPlan, step: int, data_position: int
                    ) -> dict[str, Any]:
  """A checkpoint's metadata: what resuming and evaluating the run read back."""
  return {"step": step, "data_position": data_position, "config": run.saved_config,
          "points": run.saved_points, "group": group.index, "models": list(group.models),
          "vaejax_version": vaejax.__version__}


def save_checkpoint(checkpointer: checkpoint_lib.Checkpointer, run: Plan, group: GroupPlan,
                    step: int, data_position: int, state: StackState) -> None:
  """Starts writing checkpoint ``step`` of ``group`` (host ``state``, asynchronously)."""
  checkpointer.save(step, state, checkpoint_meta(run, group, step, data_position))
