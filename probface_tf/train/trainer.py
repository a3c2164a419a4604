"""The one training loop: every stage and every method runs through :class:`Trainer`, fed by a
:class:`TrainingTask` (the stage's model, step function, state to checkpoint and per-epoch evaluation).

One run: strategy -> the recipe's inputs checked and a continued run locked (``check_inputs``, ``preflight``:
the one place for checks before any work) -> runtime -> ``task.build()`` (model, initial
weights) -> checkpoint restore (``--resume``) -> ``task.batches()`` (data, feature cache) -> run directory ->
log -> the step loop -> the last state saved. Everything that can fail on the user's input runs before the run
directory is created, so a failed start leaves nothing behind.

Each step's learning rate follows the config's schedule by global step. Due after update g: at an epoch end
the model files and the evaluation, and at ``checkpoint_interval``, an epoch end or the last step a checkpoint
(model and evaluation first: a crash between them redoes both). Resuming at step k replays exactly the batches
an uninterrupted run would have seen (the data order is a pure function of the step).

Nothing non-finite is ever written. With ``task.verify_before_save`` saving is deferred, because a state's loss
is only known once the next step computes it: what is due after update g runs inside step g+1, after its losses
(computed on exactly state g, changing nothing) are checked finite and state g's variables are checked finite,
and before update g+1 is applied; the last state is checked the same way on one more batch. Otherwise (a task
whose forward pass updates state, e.g. batch-norm statistics in training mode) each step checks its losses
before its update, and the saves run right after it once the variables are checked finite.
"""
from __future__ import annotations

import os
import shutil
import sys

from probface_tf.train.checkpoints import Checkpoints
from probface_tf.train.checks import NonFiniteLossError, check_inputs, configure_runtime, non_finite_variables
from probface_tf.train.distribute import is_chief, strategy_from_config, worker_scratch_dir
from probface_tf.train.logs import TrainingLog, banner, create_run_dir, ensure_run_dir, latest_run_dir, progress
from probface_tf.train.preflight import preflight
from probface_tf.train.run_lock import unlock_run
from probface_tf.train.run_record import record_resume
from probface_tf.train.schedule import learning_rate_for


class TrainingTask:
    """One stage of one method as the :class:`Trainer` drives it. ``TaskClass(cfg, strategy)``, then:

    * ``build() -> notes``: model, optimizer, initial weights (``restore_model``); lines for the log;
    * ``describe() -> lines`` logged after the banner; ``checkpoint_parts() -> {name: trackable}``;
    * ``batches(start_step)``: the training batches from ``start_step`` on;
    * ``step(batch, global_step, before_update) -> watch``: one update with finite losses (else
      NonFiniteLossError, the state untouched); ``before_update()`` runs once they are known finite;
    * ``batch_losses(batch, global_step)``: the losses of the current state, changing nothing (only needed with
      ``verify_before_save``);
    * ``state_variables()``: what must be finite before a save; ``set_learning_rate(lr)``;
    * ``save(run_dir, global_step, publish)``: the model files (``publish``: also the exports, chief only);
    * ``epoch_notes(global_step)`` and ``evaluate(global_step) -> (name, text, scalars)...``: after an epoch;
    * ``postfix(watch)``: the progress bar's figures; ``model``: what ``train`` returns.
    """

    verify_before_save = True
    trains = True  # False: nothing to optimise (the model is built, prepared, saved and evaluated once)

    def __init__(self, cfg, strategy):
        self.cfg, self.strategy = cfg, strategy

    def describe(self) -> list[str]:
        return []

    def epoch_notes(self, global_step: int) -> list[str]:
        return []


def resume_target(cfg, run_dir: str | None) -> tuple[str | None, str]:
    """The run ``--resume`` continues and a log note saying which; None = start a new run."""
    if run_dir is not None:
        return run_dir, f"resume: run {run_dir}"
    found = latest_run_dir(cfg)
    if found is None:
        base = os.path.join(os.path.expanduser(cfg.log_base_dir), cfg.name)
        return None, f"resume: no run under {base} has a checkpoint; starting a new run"
    return found, f"resume: newest run with a checkpoint is {found}"


class Trainer:
    """Runs a task as the config says: ``Trainer(TaskClass, cfg, ...).run()`` returns {'run_dir', 'global_step',
    'last_watch', 'model'}."""

    def __init__(self, task_type, cfg, config_path: str | None = None, resume: bool = False,
                 run_dir: str | None = None, max_steps: int | None = None, evaluate_each_epoch: bool = True):
        self.task_type, self.cfg, self.config_path = task_type, cfg, config_path
        self.resume, self.run_dir, self.max_steps = resume, run_dir, max_steps
        self.evaluate_each_epoch = evaluate_each_epoch
        self.pending: list = []
        self.saved_at = None

    def _start(self):
        """Everything before the first step; returns (task, checkpoints, batches, global_step, notes)."""
        cfg = self.cfg
        strategy = strategy_from_config(cfg)  # first: a cluster strategy must exist before other TensorFlow work
        notes = check_inputs(cfg)
        for note in notes:
            print(note, file=sys.stderr, flush=True)
        self.locked = preflight(cfg, self.run_dir, self.resume)  # every input checked, a continued run locked
        if self.resume:
            self.run_dir, note = resume_target(cfg, self.run_dir)
            notes.append(note)
        configure_runtime(cfg)
        task = self.task_type(cfg, strategy)
        notes += task.build()
        checkpoints, global_step = Checkpoints(task.checkpoint_parts(), cfg.keep_checkpoints), 0
        if self.resume and self.run_dir is not None:
            global_step, latest = checkpoints.restore_latest(self.run_dir)
            notes.append(f"resumed from checkpoint {latest} at step {global_step}" if latest
                         else f"no checkpoint in {self.run_dir}: starting at step 0")
            if is_chief(strategy):
                notes += [f"resume changes {k}: {old!r} -> {new!r}" for k, (old, new) in
                          record_resume(self.run_dir, cfg, global_step).items()]
        batches = task.batches(global_step) if task.trains else None
        self.chief = is_chief(strategy)
        if not self.chief:  # other workers of a cluster write nothing shared: their files go to a private folder
            self.run_dir, self.evaluate_each_epoch = worker_scratch_dir(strategy), False
        elif self.run_dir is None:
            self.run_dir = create_run_dir(cfg, self.config_path)
        else:
            ensure_run_dir(self.run_dir, self.config_path, cfg)
        checkpoints.attach(self.run_dir)
        return task, checkpoints, batches, global_step, notes

    def run(self) -> dict:
        task, checkpoints, batches, global_step, notes = self._start()
        cfg, run_dir = self.cfg, self.run_dir
        log = TrainingLog(run_dir)
        for note in notes:
            log.text(note, echo=not note.startswith("warning:"))  # warnings went to stderr already
        log.text(banner(cfg))
        for line in task.describe():
            log.text(line)
        total = cfg.num_epochs * cfg.epoch_size if task.trains else global_step
        stop = min(total, self.max_steps) if self.max_steps is not None else total
        if global_step == 0:
            self._due(lambda: self._save(task, 0))
        if not task.trains:
            self._due(lambda: self._end_epoch(task, log, 0))
        deferred = task.verify_before_save and task.trains
        bar, watch = progress(global_step, stop), {}
        try:
            if not deferred:
                self._flush(task, global_step)
            while global_step < stop:
                epoch, step = divmod(global_step, cfg.epoch_size)
                lr = learning_rate_for(global_step, cfg)
                task.set_learning_rate(lr)
                done = global_step
                watch = task.step(next(batches), global_step,
                                  before_update=(lambda: self._flush(task, done)) if deferred else None)
                watch["lr"] = lr
                global_step += 1
                if step % cfg.summary_interval == 0:
                    log.step(epoch, step, global_step, watch)
                self._schedule(task, checkpoints, log, global_step, stop)
                if not deferred:
                    self._flush(task, global_step)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(**task.postfix(watch))
            if self.pending and deferred:  # the last state: no next step checks it, so check it on one more batch
                task.batch_losses(next(batches), global_step)
            self._flush(task, global_step)
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(f"{exc}; training stopped, this state was not saved; latest checkpoint: "
                                     f"{checkpoints.latest or 'none'}") from None
        finally:
            if bar is not None:
                bar.close()
            if not self.chief:
                shutil.rmtree(run_dir, ignore_errors=True)
        unlock_run(self.locked)
        return {"run_dir": run_dir, "global_step": global_step, "last_watch": watch, "model": task.model}

    def _schedule(self, task, checkpoints, log, global_step: int, stop: int) -> None:
        """Queue what is due after the update that reached ``global_step``."""
        epoch_end = global_step % self.cfg.epoch_size == 0
        if epoch_end or global_step == stop:  # the model files of every epoch and of the last state
            self._due(lambda: self._save(task, global_step))
        if epoch_end:
            self._due(lambda: self._end_epoch(task, log, global_step))
        if global_step % self.cfg.checkpoint_interval == 0 or epoch_end or global_step == stop:
            self._due(lambda: checkpoints.save(global_step))

    def _due(self, job) -> None:
        self.pending.append(job)

    def _flush(self, task, global_step: int) -> None:
        """Run the queued saves once the state is known finite."""
        if not self.pending:
            return
        bad = non_finite_variables(task.state_variables())
        if bad:
            raise NonFiniteLossError(f"non-finite variables at global step {global_step}: {', '.join(bad[:5])}")
        for job in self.pending:
            job()
        self.pending.clear()

    def _save(self, task, global_step: int) -> None:
        if self.saved_at != global_step:
            task.save(self.run_dir, global_step, publish=self.chief)
            self.saved_at = global_step

    def _end_epoch(self, task, log: TrainingLog, global_step: int) -> None:
        for note in task.epoch_notes(global_step):
            log.text(note)
        if not self.evaluate_each_epoch:
            return
        for name, text, scalars in task.evaluate(global_step):
            log.text(f"--- {name} ---")
            log.text(text)
            log.scalars(scalars, global_step, prefix=f"{name}/")
