"""`GradientAlignmentCallback`: pause a TRL distillation run, diagnose every teacher on the same nodes, log.

What one pause does, in order (all of it at `on_step_end`, where the optimizer has stepped and gradients are zeroed):
take the student's latest rollouts from the trainer (or sample fresh ones), verify each, pick nodes, read every
teacher's logits there, run the diagnosis (targeted rollouts, directions, parameter-space cosines), then log scalars
through `Trainer.log`, histograms to TensorBoard and per-node records to disk.

The observed run must continue exactly as without the callback: the global RNG streams are saved and restored, the
model's modes and `requires_grad` flags are restored by the engine, gradients are taken with `torch.autograd.grad`
(never `.backward()`, so `.grad` and optimizer hooks are untouched), the trainer's `_metrics` are not used (TRL's
`log` overrides flush them; the base `Trainer.log` is called instead), and a failing pause is a counted skip with a
warning, never an exception into the training loop.
"""

import inspect
import logging
import math
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import ExportableState

from ..diagnosis import PassResult, TeacherSource, context_teacher, diagnose_rollouts, model_teacher
from ..diagnosis.rollout_pass import merge_results
from ..diagnosis.teacher_checks import check_tokenizers, check_vocabulary, check_weights_loaded, load_tokenizer_of
from ..engine.reward_funcs import check_reward_dataset
from ..method.streams import derive_seed
from ..outputs.metrics import pause_metrics
from ..outputs.runs import new_run_id
from ..outputs.tensorboard import find_tensorboard_writer
from ..world.checkpoints import resolve_model
from .adapters import adapter_for
from .config import GradientAlignmentConfig
from .distributed import deepspeed_engines, full_parameters, gather_lists, is_zero3, prepare_teacher
from .run_outputs import RunOutputs, run_info


logger = logging.getLogger(__name__)

_STATE = ("run_id", "pauses", "nodes_total", "errors", "output_errors", "skipped", "last_step")


def _callback_being_replaced():
    """
    The live callback that `Trainer._load_callback_state` is rebuilding, found in that method's frame: it calls
    `type(callback)(**args)` with the live `callback` and the trainer (`self`) as locals. Binding to that callback
    (hence to that trainer) needs no process-global state, so two trainers in one process cannot be confused.
    """
    frame = inspect.currentframe()
    try:
        caller = frame.f_back.f_back if frame is not None and frame.f_back is not None else None
        for _ in range(3):
            if caller is None:
                return None
            live, trainer = caller.f_locals.get("callback"), caller.f_locals.get("self")
            if isinstance(live, GradientAlignmentCallback) and isinstance(trainer, Trainer):
                return live if getattr(live, "trainer", None) is trainer else None
            caller = caller.f_back
        return None
    finally:
        del frame


@contextmanager
def preserved_rng():
    """Save and restore every global RNG stream the training loop may draw from."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


class GradientAlignmentCallback(TrainerCallback, ExportableState):
    """
    Logs, while a TRL on-policy distillation run trains, how well each teacher's distillation gradient aligns with
    the ideal gradient (the update that most raises the student's chance of solving the problem, estimated by
    targeted rollouts), per teacher and per self-distillation context, on the student's own rollouts.

    Supported trainers: [`~trl.DistillationTrainer`], [`~trl.experimental.gkd.GKDTrainer`],
    [`~trl.experimental.sdft.SDFTTrainer`], [`~trl.experimental.gold.GOLDTrainer`] (a teacher with another tokenizer
    through its ULD loss), [`~trl.experimental.sdpo.SDPOTrainer`], [`~trl.experimental.iw_opd.IWOPDTrainer`].

    Args:
        trainer ([`~transformers.Trainer`]):
            The trainer to observe (constructed, not yet training).
        config ([`GradientAlignmentConfig`], *optional*):
            Every knob; defaults when omitted.
        teachers (`dict[str, PreTrainedModel | str]`, *optional*):
            Extra teacher models (or paths / Hub ids, or `(model, tokenizer)` pairs) by short name, besides the
            trainer's own teacher and those in `config.alignment_extra_teachers`. They must share the student's
            tokenizer: it is compared token for token with the teacher's (loaded from the path, or from the model's
            `name_or_path`; pass a pair when neither has one).
        self_contexts (`list[SelfContext]`, *optional*):
            Extra self-distillation contexts, besides `config.alignment_self_contexts`.
        reward_func (`Callable`, *optional*):
            TRL-style reward function `f(prompts, completions, **columns) -> list[float | None]` verifying
            completions; defaults to `config.alignment_reward_funcs` (the built-in numeric verifier on
            `config.alignment_answer_column` unless set).

    Example:

    ```python
    from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig

    trainer = DistillationTrainer(model=..., teacher_model=..., args=..., train_dataset=...)
    trainer.add_callback(GradientAlignmentCallback(trainer, GradientAlignmentConfig(alignment_every_n_steps=50)))
    trainer.train()  # TensorBoard: train/gad/alignment/<teacher>, histograms, a custom-scalars layout
    ```
    """

    def __init__(
        self,
        trainer=None,
        config: GradientAlignmentConfig | None = None,
        *,
        teachers=None,
        self_contexts=None,
        reward_func=None,
    ):
        if trainer is None:
            # transformers' `restore_callback_states_from_checkpoint` rebuilds callbacks from their `state()` alone;
            # the trainer cannot be serialised, so take over the live callback this one replaces (same trainer).
            live = _callback_being_replaced()
            if live is None:
                raise ValueError(
                    "GradientAlignmentCallback needs the trainer: GradientAlignmentCallback(trainer, config). (Built "
                    "without one, it can only replace its own live instance while a Trainer restores callback states "
                    "from a checkpoint.)"
                )
            self.__dict__.update(live.__dict__)
            return
        self.trainer = trainer
        self.config = config or GradientAlignmentConfig()
        self.adapter = adapter_for(trainer, self.config.alignment_rollouts_per_pause)
        if getattr(trainer, "is_fsdp_enabled", False):
            # FSDP flattens and shards parameters inside its wrapper: probes on the unwrapped module would see
            # shards, i.e. wrong gradients. Refuse rather than report a wrong number.
            raise ValueError(
                "GradientAlignmentCallback does not support FSDP. Use DeepSpeed ZeRO-2/3 "
                "(configs/accelerate/deepspeed_zero3.yaml) or plain data parallelism."
            )
        self.student = trainer.accelerator.unwrap_model(trainer.model)
        # A Python callable wins over the config's `alignment_reward_funcs`; either is checked against the dataset.
        self.reward_func = reward_func or self.config.reward_func
        check_reward_dataset(self.reward_func, self.adapter.dataset)
        self.teachers = self._build_teachers(teachers or {}, self_contexts or [])
        for warning in self.adapter.sampling_warnings():
            logger.warning("gad: %s.", warning)
        if self.adapter.max_completion_length() < 1:
            logger.warning(
                "gad: the trainer's completion length is %d: every rollout is empty, so every pause will only count "
                "skips (empty_rollout). Set max_completion_length (max_new_tokens for GKD) >= 1.",
                self.adapter.max_completion_length(),
            )
        self._reset()
        self._outputs = None

    # -- set-up -----------------------------------------------------------------------------------------------------
    def _build_teachers(self, extra_models: dict, extra_contexts: list) -> list[TeacherSource]:
        loss, cfg, adapter, trainer = self.adapter.teacher_loss(), self.config, self.adapter, self.trainer
        sources, engines = [], []  # engines of our own teachers; the trainer's are looked up at each pause
        self._prepared = {}  # extra teacher models as prepared for the trainer, by name (the router trains with them)
        self._extra_contexts = list(extra_contexts)  # the router's candidates on SDFT, with the config's
        if cfg.alignment_trainer_teacher:
            source = adapter.trainer_teacher(cfg.alignment_trainer_teacher)
            # The trainer's external teacher: its tokenizer must match too, unless the trainer's loss aligns the two
            # tokenizations itself (GOLD's ULD).
            if source.model is not self.student and not adapter.cross_tokenizer_teacher:
                check_tokenizers(source.name, load_tokenizer_of(source.name, source.model), adapter.tokenizer)
            sources.append(source)
        for name, model in {**cfg.extra_teachers, **extra_models}.items():
            tokenizer = None
            if isinstance(model, tuple):
                model, tokenizer = model
            if isinstance(model, str):
                path = resolve_model(model)
                model = self._load(path)
                tokenizer = tokenizer or load_tokenizer_of(name, model, path)
            elif tokenizer is None:
                tokenizer = load_tokenizer_of(name, model)
            # Checked before DeepSpeed wraps it (shapes, weights and tokens are those the user gave).
            check_weights_loaded(name, model)
            check_vocabulary(name, model, self.student)
            check_tokenizers(name, tokenizer, adapter.tokenizer)
            prepared = prepare_teacher(model, trainer)  # exactly as TRL prepares its own teacher
            engines.append(prepared)
            self._prepared[name] = prepared
            sources.append(
                adapter.wrap(model_teacher(name, trainer.accelerator.unwrap_model(prepared), self.student, loss))
            )
        base_copy = None
        for context in cfg.self_contexts + list(extra_contexts):
            if (
                context.weights == "base"
                and not hasattr(self.student, "disable_adapter")
                and is_zero3(trainer.accelerator)
            ):
                if base_copy is None:
                    # ZeRO-3 shards the student's parameters: a deep copy would copy empty shards. Rebuild the
                    # initial weights from the student's path, as TRL's SDFT does for its base teacher.
                    base_copy = prepare_teacher(self._load(self.student.config._name_or_path), trainer)
                    engines.append(base_copy)
                model = trainer.accelerator.unwrap_model(base_copy)
            else:
                model = None
            columns = adapter.dataset.column_names
            example = adapter.dataset[0] if len(adapter.dataset) else None
            sources.append(
                adapter.wrap(
                    context_teacher(
                        context,
                        self.student,
                        adapter.tokenize_teacher_prompts,
                        loss,
                        columns,
                        model,
                        example_row=example,
                    )
                )
            )
        names = [s.name for s in sources]
        if not sources:
            raise ValueError(
                "No teacher to diagnose: keep alignment_trainer_teacher, or add teachers or self-contexts."
            )
        if len(set(names)) != len(names):
            raise ValueError(f"Teacher names must be unique, got {names}.")
        self._engines = engines
        return sources

    def _load(self, name_or_path: str):
        from transformers import AutoModelForCausalLM

        if not name_or_path:
            raise ValueError("Cannot rebuild a teacher: the model has no name_or_path to load it from.")
        return AutoModelForCausalLM.from_pretrained(resolve_model(name_or_path), dtype=self.student.dtype)

    # -- checkpoint state -------------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self.run_id, self.pauses, self.nodes_total, self.errors, self.output_errors = None, 0, 0, 0, 0
        self.skipped, self.last_step = {}, -1

    #: Attributes saved in checkpoints (`state()`) and restored on resume.
    state_attributes = _STATE

    def state(self) -> dict:
        # The run id travels with the checkpoint: a resumed run writes on under the same id.
        values = {name: getattr(self, name) for name in self.state_attributes}
        values["skipped"] = dict(self.skipped)
        return {"args": {}, "attributes": values}

    def on_train_begin(self, args, state, control, **kwargs):
        if state.global_step == 0:
            self._reset()  # a fresh run (also a second `train()` of the same trainer): new id, zero counters
        else:
            # Resuming: our counters and run id come from the checkpoint's trainer state, whether or not transformers
            # was asked to restore callback states itself.
            saved = state.stateful_callbacks.get(type(self).__name__) if state.stateful_callbacks else None
            if isinstance(saved, list):
                # Several of our callbacks on one trainer: transformers appends their states at every checkpoint
                # (after those taken when training started), so the last `n` entries are the checkpoint's, in the
                # order of the callbacks.
                ours = [cb for cb in self.trainer.callback_handler.callbacks if type(cb) is type(self)]
                index = next((i for i, cb in enumerate(ours) if cb is self), 0)
                saved = saved[-len(ours) :][index] if len(saved) >= len(ours) > index else None
            for key, value in ((saved or {}).get("attributes") or {}).items():
                if key in self.state_attributes:
                    setattr(self, key, value)
        self.run_id = self.run_id or new_run_id()
        if state.max_steps and self.config.alignment_every_n_steps > state.max_steps:
            logger.warning(
                "gad: alignment_every_n_steps=%d is larger than max_steps=%d: no pause will run in this training. "
                "Lower alignment_every_n_steps.",
                self.config.alignment_every_n_steps,
                state.max_steps,
            )
        if state.is_world_process_zero:
            cfg = self.config
            run_dir = Path(args.output_dir) / cfg.alignment_output_subdir / self.run_id
            self._outputs = RunOutputs(
                run_dir,
                [t.name for t in self.teachers],
                cfg.alignment_write_records,
                cfg.alignment_histograms,
                cfg.alignment_confidence,
            )
            resumed_at = state.global_step if state.global_step else None
            self._write(self._outputs.start, run_info(self, args, state, "running"), resumed_at)
            logger.info("gad: run %s, outputs under %s", self.run_id, run_dir)

    def _write(self, write, *args) -> None:
        """Run one of `RunOutputs`' writes (they count and warn their failures instead of raising) and add its
        failures to the run's `output_errors`."""
        before = self._outputs.failures
        write(*args)
        self.output_errors += self._outputs.failures - before

    # -- the pause --------------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if step % self.config.alignment_every_n_steps != 0 or step == self.last_step:
            return
        self._pause_and_log(args, state, control, step)

    def _after_pause(self, step: int, result: PassResult, ok: bool) -> dict[str, float]:
        """Extra scalars of a pause, logged with its own (the router decides here); none for the observer."""
        return {}

    def _pause_and_log(self, args, state, control, step: int, fresh: bool = False) -> None:
        self.last_step = step
        start = time.perf_counter()
        with preserved_rng():
            metrics, result, errors = self._pause(step, state.is_local_process_zero, fresh)
        if errors:  # a diagnostic must never take the training run down with it: counted, warned, skipped
            self.errors += 1
            for error in errors:
                logger.warning("gad: pause at step %d skipped: %s", step, error)
            metrics, result = {}, PassResult()
        else:
            for reason, count in result.skipped.items():
                self.skipped[reason] = self.skipped.get(reason, 0) + count
            self.nodes_total += int(metrics["gad/nodes"])
        self.pauses += 1
        metrics.update(self._after_pause(step, result, not errors))
        metrics["gad/seconds"] = time.perf_counter() - start
        metrics["gad/errors"] = float(self.errors)
        metrics["gad/output_errors"] = float(self.output_errors)
        finite = {k: float(v) for k, v in metrics.items() if not math.isnan(v)}
        # Logging goes through the callback handler's `on_log`, which clears `control.should_log`: the trainer's own
        # log at this step would silently vanish. Keep the control flags exactly as the trainer set them.
        flags = dict(vars(control))
        try:
            # The base Trainer.log, not TRL's override: TRL's averages and clears the trainer's own running metrics.
            Trainer.log(self.trainer, dict(finite))
        except Exception as err:  # another logger (report_to) failing must not stop training either
            self.output_errors += 1
            logger.warning(
                "gad: logging the step %d metrics failed (%s: %s); training continues.", step, type(err).__name__, err
            )
        finally:
            vars(control).update(flags)
            self.trainer.control = control
        if self._outputs is not None:  # main process only
            self._write(self._outputs.pause, step, finite, result, find_tensorboard_writer(self.trainer))
            self._write(self._outputs.update_info, run_info(self, args, state, "running"), step)

    def _seed(self, step: int) -> int:
        return derive_seed(self.config.alignment_seed, "pause", step)

    def _pause(self, step: int, show_progress: bool, fresh: bool = False):
        """
        One pause on every process: the same rollouts everywhere, every `world_size`-th one diagnosed here, rows
        gathered. Local failures are caught and reported after the collectives, so no process is left waiting.
        `fresh`: sample new rollouts from training prompts instead of reading the trainer's (before the first step,
        when it has none yet).
        """
        cfg, adapter, acc = self.config, self.adapter, self.trainer.accelerator
        rank, world = acc.process_index, acc.num_processes
        generator = torch.Generator().manual_seed(self._seed(step))
        local, error = PassResult(), None
        # The student's DeepSpeed engine only exists once training has started (`model_wrapped` is the bare model
        # at attach time), so the engines are collected here, not when the callback is built.
        trainer_engines = (self.trainer.model_wrapped, getattr(self.trainer, "teacher_model", None))
        with full_parameters(deepspeed_engines(*trainer_engines, *self._engines), acc):
            try:
                if fresh:  # every process samples the same ones, from the seed they share
                    rollouts = adapter.fresh_rollouts(self.student, generator, cfg.alignment_rollouts_per_pause)
                else:
                    rollouts = adapter.rollouts(self.student, generator)
            except Exception as err:
                rollouts, error = [], f"{type(err).__name__}: {err}"
            if adapter.rollouts_are_local and not fresh:
                rollouts = gather_lists(rollouts, world)
            if len(rollouts) > cfg.alignment_rollouts_per_pause:
                pick = torch.randperm(len(rollouts), generator=generator)[: cfg.alignment_rollouts_per_pause]
                rollouts = [rollouts[i] for i in sorted(pick.tolist())]
            for i, rollout in enumerate(rollouts):  # identity and seed belong to the rollout, not to the process
                rollout.key, rollout.seed = f"{step}-{i}", derive_seed(self._seed(step), "rollout", i)
            if error is None:
                try:
                    local = diagnose_rollouts(
                        self.student,
                        adapter.tokenizer,
                        rollouts[rank::world],
                        self.teachers,
                        self.reward_func,
                        cfg.diagnosis(adapter.max_completion_length(), adapter.temperature()),
                        cfg.pass_settings(adapter.max_completion_length()),
                        step=step,
                        progress=show_progress,
                    )
                except Exception as err:
                    error = f"{type(err).__name__}: {err}"
                    logger.debug("gad: pause failed", exc_info=True)
        parts = gather_lists([(local, error)], world)
        result = merge_results([p for p, _ in parts])
        errors = [e for _, e in parts if e is not None]
        names = [t.name for t in self.teachers]
        metrics = pause_metrics(result, names, cfg.alignment_confidence, seed=self._seed(step)) if not errors else {}
        return metrics, result, errors

    def on_train_end(self, args, state, control, **kwargs):
        if self._outputs is not None:
            self._write(self._outputs.update_info, run_info(self, args, state, "finished"), state.global_step)
            self._write(self._outputs.close)
