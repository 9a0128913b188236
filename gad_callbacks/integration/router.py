"""`AlignmentRouter`: train with the teacher (or privileged context) whose gradient is currently best aligned.

The observing [`GradientAlignmentCallback`] never changes the run it watches. The router is the one component meant
to: at every pause it measures all candidates on the same nodes, exactly as the observer does, and until the next
pause the trainer distils from one of them, either the one with the highest pooled alignment (`greedy`) or one drawn
with its probability of being best (`thompson`: a candidate whose alignment is still uncertain keeps being tried, and
so keeps being measured on nodes the student visits under it).

"Probability of being best" is the share of joint cluster-bootstrap replicates in which a candidate's pooled alignment
is the highest ([`best_probabilities`]): the replicates resample the same rollouts for every candidate, so two
candidates scored on the same nodes are compared with their pairing kept.

What a switch changes:
- `DistillationTrainer` / `GKDTrainer`: the trainer's `teacher_model` (the trainer's own teacher or an extra teacher,
  prepared for the trainer as TRL prepares its own, DeepSpeed included).
- `SDFTTrainer`: the privileged prompt its teacher reads. The candidates are self-distillation contexts (templates
  over the dataset's columns, [`SelfContext`]); the trainer's teacher prompt is rendered from the chosen one by the
  same function that renders it for the measurement, so what is measured is what is trained with. It takes effect
  at the trainer's next generation batch (SDFT builds teacher prompts when it samples rollouts).
"""

import logging
import math
from dataclasses import dataclass, field

import torch

from ..method.stats import best_probabilities, joint_pooled
from ..method.streams import stream
from ..outputs.compare import node_matrix
from ..outputs.records import to_node_records
from .adapters import DistillationAdapter, GKDAdapter, SDFTAdapter
from .callback import _STATE, GradientAlignmentCallback
from .config import GradientAlignmentConfig
from .context_route import ContextRoute
from .distributed import gather_lists


logger = logging.getLogger(__name__)

STRATEGIES = ("thompson", "greedy")
ROUTED_TRAINERS = ("DistillationTrainer", "GKDTrainer", "SDFTTrainer")


@dataclass
class AlignmentRouterConfig(GradientAlignmentConfig):
    """
    Configuration of [`AlignmentRouter`]: every knob of [`GradientAlignmentConfig`] (what a pause measures), plus
    how the router chooses.

    Parameters:
        router_strategy (`str`, *optional*, defaults to `"thompson"`):
            `"thompson"`: draw the candidate to train with from each one's probability of being best (joint
            cluster bootstrap of pooled alignment); `"greedy"`: the highest pooled alignment.
        router_window (`int`, *optional*, defaults to `1`):
            Pauses pooled for a decision: the latest one alone (1), or it with the ones before it. The student
            changes as it trains, so older pauses describe a student that is gone; more pauses, narrower intervals.
        router_measure_at_start (`bool`, *optional*, defaults to `True`):
            Measure every candidate on fresh rollouts before the first training step, so that training starts with
            a measured choice. Otherwise training starts with `router_initial`.
        router_initial (`str`, *optional*, defaults to `""`):
            The candidate to start with when nothing is measured yet; the first candidate when empty.
    """

    router_strategy: str = field(default="thompson", metadata={"help": "'thompson' or 'greedy'."})
    router_window: int = field(default=1, metadata={"help": "Pauses pooled for a decision (latest first)."})
    router_measure_at_start: bool = field(
        default=True, metadata={"help": "Measure every candidate before the first training step."}
    )
    router_initial: str = field(default="", metadata={"help": "Candidate to start with (default: the first)."})

    def __post_init__(self):
        super().__post_init__()
        if self.router_strategy not in STRATEGIES:
            raise ValueError(f"router_strategy must be one of {STRATEGIES}, got {self.router_strategy!r}.")
        if self.router_window < 1:
            raise ValueError(f"router_window must be >= 1, got {self.router_window}.")


def pooled_by_candidate(rows, candidates: list[str], num_bootstrap: int, generator: torch.Generator):
    """
    Pooled alignment (parameter space) of every candidate on the nodes of `rows`, and their joint bootstrap
    replicates ([`joint_pooled`]), clustered as every other aggregate: `gad compare`'s ranking, on a pause's rows.
    """
    nodes = node_matrix(to_node_records(rows), candidates)
    return joint_pooled(
        nodes.proj,
        nodes.norm2,
        clusters=nodes.clusters,
        weights=nodes.weights,
        num_bootstrap=num_bootstrap,
        generator=generator,
    )


def choose(points, replicates, strategy: str, current: int, generator: torch.Generator) -> tuple[int, torch.Tensor]:
    """
    The candidate to train with and every candidate's probability of being chosen.

    `greedy`: the highest pooled alignment. `thompson`: a draw from the probabilities of being best; where they
    cannot be estimated (fewer than two clusters to resample, or no replicate with a defined pool) it falls back to
    greedy. With no pooled alignment defined at all (no node had anything at stake) the current choice stays: a pause
    that measured nothing is no reason to switch. Every candidate is measured at every pause whichever one trains, so
    exploring is not what keeps a candidate measured; Thompson's draws hedge against a noisy leader.
    """
    points = torch.as_tensor(points, dtype=torch.float64)
    n = points.numel()
    one_hot = torch.zeros(n, dtype=torch.float64)
    if bool(torch.isnan(points).all()):
        one_hot[current] = 1.0
        return current, one_hot
    if strategy == "thompson":
        probabilities = best_probabilities(replicates)
        if not bool(torch.isnan(probabilities).any()):
            return int(torch.multinomial(probabilities, 1, generator=generator)), probabilities
    one_hot[int(torch.nan_to_num(points, nan=-math.inf).argmax())] = 1.0
    return int(one_hot.argmax()), one_hot


class _ModelRoute:
    """Distillation / GKD: a switch sets the trainer's `teacher_model` to the chosen (prepared) model."""

    def __init__(self, trainer, models: dict):
        self.trainer, self.models = trainer, models

    def apply(self, name: str) -> None:
        self.trainer.teacher_model = self.models[name]

    def unrouted(self) -> int:
        return 0


class AlignmentRouter(GradientAlignmentCallback):
    """
    Trains with the teacher or privileged context whose distillation gradient is best aligned with the ideal
    gradient, re-measured at every pause. Unlike [`GradientAlignmentCallback`], it changes the run it is attached
    to: that is its purpose. Everything else (what a pause measures, logs and writes, the RNG streams it leaves
    untouched, DDP / DeepSpeed ZeRO-2/3) is the observer's.

    Candidates: for [`~trl.DistillationTrainer`] and [`~trl.experimental.gkd.GKDTrainer`], the trainer's own teacher
    (unless `alignment_trainer_teacher` is empty) and the extra teachers; for
    [`~trl.experimental.sdft.SDFTTrainer`], the self-distillation contexts (with `alignment_trainer_teacher` empty:
    the trainer's teacher is whichever context is chosen), whose weights must be SDFT's `teacher_model_kind`.

    Logged at every pause, next to the observer's scalars: `gad/router/choice` (the chosen candidate's index in
    `run.json`'s `teachers`), `gad/router/chosen/<name>` (1 for the chosen one), `gad/router/prob/<name>` (its
    probability of being chosen), `gad/router/pooled/<name>` (the pooled alignment the decision used) and
    `gad/router/switches`. The decision is drawn from a stream of `alignment_seed` and the step, the same on every
    process, and the main process's decision is the one every process applies.

    Args:
        trainer, config, teachers, self_contexts, reward_func: as for [`GradientAlignmentCallback`]; `config` is an
            [`AlignmentRouterConfig`].

    Example:

    ```python
    from gad_callbacks import AlignmentRouter, AlignmentRouterConfig

    config = AlignmentRouterConfig(
        alignment_trainer_teacher="",
        alignment_self_contexts=["solution:base={prompt} Reference solution: {solution}", "hint:base={prompt} Hint: {hint}"],
    )
    trainer.add_callback(AlignmentRouter(trainer, config))  # trainer: an SDFTTrainer
    ```
    """

    state_attributes = (*_STATE, "choice", "probabilities", "switches", "history")

    def __init__(self, trainer=None, config: AlignmentRouterConfig | None = None, **kwargs):
        if trainer is None:  # rebuilt from a checkpoint's state: take over the live instance (see the observer)
            super().__init__(None)
            return
        config = config or AlignmentRouterConfig()
        if not isinstance(config, AlignmentRouterConfig):
            raise ValueError("AlignmentRouter takes an AlignmentRouterConfig (GradientAlignmentConfig plus router_*).")
        super().__init__(trainer, config, **kwargs)
        kind = type(trainer).__name__
        # By adapter, not by class name: a subclass of a routed trainer is routed like it (GOLD / IW-OPD / SDPO
        # have adapters of their own, and their losses see more than the teacher model or the prompt).
        if type(self.adapter) not in (DistillationAdapter, GKDAdapter, SDFTAdapter):
            raise ValueError(
                f"AlignmentRouter routes the teacher of {', '.join(ROUTED_TRAINERS)}, not of {kind}. To measure "
                f"{kind}'s teachers without changing the run, use GradientAlignmentCallback."
            )
        self.candidates = [t.name for t in self.teachers]
        self.route = self._build_route(type(self.adapter) is SDFTAdapter)
        if len(self.candidates) < 2:
            raise ValueError(f"AlignmentRouter needs at least two candidates to choose from, got {self.candidates}.")
        if config.router_initial and config.router_initial not in self.candidates:
            raise ValueError(f"router_initial {config.router_initial!r} is not a candidate: {self.candidates}.")
        self._window: list[list[dict]] = []
        self._start()

    def _build_route(self, sdft: bool):
        cfg, kind = self.config, type(self.trainer).__name__
        if sdft:
            if cfg.alignment_trainer_teacher or cfg.extra_teachers or self._prepared:
                raise ValueError(
                    "AlignmentRouter on SDFTTrainer chooses among self-distillation contexts (alignment_self_contexts): "
                    "SDFT's teacher is the student itself, and under the router it reads whichever context is chosen. "
                    "Set alignment_trainer_teacher: '' and give no extra teacher models."
                )
            contexts = {c.name: c for c in self._contexts()}
            return ContextRoute(self.trainer, contexts)
        if self._contexts():
            raise ValueError(
                f"{kind} distils from a teacher model: self-distillation contexts cannot be its teacher. Route "
                "them with SDFTTrainer, or give the router teacher models only."
            )
        models = dict(self._prepared)
        if cfg.alignment_trainer_teacher:
            models[cfg.alignment_trainer_teacher] = self.trainer.teacher_model
            # Once swapped out, the trainer's own teacher is no longer `trainer.teacher_model`, where a pause looks
            # for the engines to gather under ZeRO-3: keep it among ours, or it would be measured with shards.
            self._engines.append(self.trainer.teacher_model)
        return _ModelRoute(self.trainer, models)

    def _contexts(self):
        return list(self.config.self_contexts) + self._extra_contexts

    def _start(self) -> None:
        initial = self.config.router_initial or self.candidates[0]
        self.choice, self.switches, self.history = initial, 0, []  # history: [step, choice] per decision
        self.probabilities = {name: float(name == initial) for name in self.candidates}
        self.route.apply(initial)

    def _reset(self) -> None:
        super()._reset()
        if hasattr(self, "route"):
            self._window = []
            self._start()

    # -- the run ------------------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        if state.global_step > 0:
            # Resumed: the checkpoint's choice holds until the next pause (the decision window starts afresh).
            if self.choice not in self.candidates or set(self.probabilities) != set(self.candidates):
                logger.warning(
                    "gad: router: the checkpoint's choice %r is not among this run's candidates %s; starting from %s.",
                    self.choice,
                    self.candidates,
                    self.config.router_initial or self.candidates[0],
                )
                history, switches = self.history, self.switches
                self._start()
                self.history, self.switches = history, switches
            self.route.apply(self.choice)
        elif self.config.router_measure_at_start:
            self._pause_and_log(args, state, control, 0, fresh=True)

    def _after_pause(self, step: int, result, ok: bool) -> dict[str, float]:
        current = self.candidates.index(self.choice)
        index, probabilities, points = current, None, None
        if ok:  # a failed (skipped) pause measured nothing: the choice stays
            self._window = ([result.rows] + self._window)[: self.config.router_window]
            try:
                rows = [row for rows in self._window for row in rows]
                generator = stream(self.config.alignment_seed, "router", step)
                points, replicates = pooled_by_candidate(
                    rows, self.candidates, self.config.alignment_num_bootstrap, generator
                )
                index, probabilities = choose(points, replicates, self.config.router_strategy, current, generator)
            except Exception as err:  # deciding must not take the training run down either: keep the choice
                index, probabilities, points = current, None, None
                logger.warning(
                    "gad: router decision at step %d failed (%s: %s); keeping %s.",
                    step,
                    type(err).__name__,
                    err,
                    self.choice,
                )
        # Every process computed the same decision from the same gathered rows; the main process's is applied
        # everywhere all the same, so that a rounding difference can never split the run.
        index = gather_lists([index], self.trainer.accelerator.num_processes)[0]
        choice = self.candidates[index]
        if choice != self.choice:
            self.switches += 1
            logger.info("gad: router switches from %s to %s at step %d", self.choice, choice, step)
        self.choice = choice
        self.history.append([step, choice])
        if probabilities is not None:
            self.probabilities = dict(zip(self.candidates, map(float, probabilities.tolist()), strict=True))
        self.route.apply(choice)
        metrics = {"gad/router/choice": float(index), "gad/router/switches": float(self.switches)}
        for name in self.candidates:
            metrics[f"gad/router/chosen/{name}"] = float(name == choice)
            metrics[f"gad/router/prob/{name}"] = self.probabilities[name]
        if points is not None:
            for name, pooled in zip(self.candidates, points.tolist(), strict=True):
                metrics[f"gad/router/pooled/{name}"] = float(pooled)
        unrouted = self.route.unrouted()
        if unrouted:
            metrics["gad/router/unrouted_prompts"] = float(unrouted)
        return metrics
