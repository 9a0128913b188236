"""`GradientAlignmentConfig`: every knob of the training-time diagnostic, parseable by `TrlParser` from YAML.

Field names avoid those of TRL's trainer configs (`seed`, `temperature`, `max_new_tokens`, ...) so that one YAML file
and one `TrlParser((ScriptArguments, DistillationConfig, GradientAlignmentConfig))` can hold everything.
"""

import re
from dataclasses import dataclass, field

from ..diagnosis import DiagnosisConfig, PassSettings, SelfContext
from ..diagnosis.teachers import parse_named_models
from ..engine.reward_funcs import build_reward_func
from ..method.nodes import STRATEGIES


# Our keys and the [`DiagnosisConfig`] fields they set.
_DIAGNOSIS_KEYS = {
    "alignment_targeted_rollouts": "num_rollouts",
    "alignment_max_new_tokens": "max_new_tokens",
    "alignment_candidate_mass": "mass",
    "alignment_max_candidates": "max_candidates",
    "alignment_teacher_top_tokens": "teacher_top",
    "alignment_params": "params",
    "alignment_max_vectors": "max_vectors",
    "alignment_sketch_dim": "sketch_dim",
    "alignment_num_bootstrap": "num_bootstrap",
    "alignment_confidence": "confidence",
    "alignment_seed": "seed",
    "alignment_allocation": "allocation",
    "alignment_min_rollouts": "min_rollouts",
    "alignment_target_width": "target_width",
    "alignment_reuse_rollout_outcome": "reuse_observed",
    "alignment_screen_rollouts": "screen_rollouts",
    "alignment_screen_keep": "screen_keep",
}


@dataclass
class GradientAlignmentConfig:
    """
    Configuration of [`GradientAlignmentCallback`].

    Parameters:
        alignment_every_n_steps (`int`, *optional*, defaults to `50`):
            Pause training every this many optimizer steps to diagnose.
        alignment_rollouts_per_pause (`int`, *optional*, defaults to `4`):
            Student rollouts diagnosed per pause, in total (split across processes).
        alignment_nodes_per_rollout (`int`, *optional*, defaults to `4`):
            Nodes (completion positions) diagnosed per rollout.
        alignment_node_strategy (`str`, *optional*, defaults to `"entropy"`):
            `"entropy"` (nodes drawn in proportion to the student's entropy: near one-hot nodes carry no signal and
            would come out undefined; averages are then entropy-weighted), `"uniform"` (the plain per-token average,
            mostly undefined nodes on a confident student) or `"depth_windows"`.
        alignment_targeted_rollouts (`int`, *optional*, defaults to `8`):
            Targeted rollouts per candidate token (uniform allocation), or the per-candidate budget a node may spend
            at most (adaptive allocation).
        alignment_allocation (`str`, *optional*, defaults to `"uniform"`):
            `"uniform"`: `alignment_targeted_rollouts` per candidate. `"adaptive"`: `alignment_min_rollouts` per
            candidate first, then rounds spent where they shrink the noise of the cosines most, stopping a node once
            its intervals are narrower than `alignment_target_width`: fewer rollouts for the same interval width, but
            pooled alignment is then no longer exactly unbiased (see [`DiagnosisConfig`]).
        alignment_min_rollouts (`int`, *optional*, defaults to `4`):
            First-round targeted rollouts per candidate under adaptive allocation (>= 2).
        alignment_target_width (`float`, *optional*, defaults to `0.5`):
            Adaptive allocation stops a node once every teacher's parameter-space interval is at most this wide.
        alignment_screen_rollouts (`int`, *optional*, defaults to `1`):
            Uniform allocation: targeted rollouts per candidate spent first to screen a node. A node whose screening
            continuations all end the same way (all right or all wrong) stops there, except with probability
            `alignment_screen_keep`, when it is finished and weighs `1 / alignment_screen_keep` in pooled alignment
            and means (Russian roulette: pooled alignment stays unbiased, see [`DiagnosisConfig`]). A stopped node is
            flat, costs no parameter-space backward for its candidates and has no parameter-space interval. `0`: off.
        alignment_screen_keep (`float`, *optional*, defaults to `0.25`):
            Probability that a node whose screen was all alike is finished anyway (in (0, 1]; 1 screens nothing out).
        alignment_reuse_rollout_outcome (`bool`, *optional*, defaults to `False`):
            Count the rollout's own verified outcome as one more sample of the sampled token. Off by default: node
            selection looks at the rest of the rollout (its length, its entropies), so that outcome is not an
            unbiased draw.
        alignment_max_new_tokens (`int`, *optional*):
            Longest targeted continuation; defaults to the trainer's completion length.
        alignment_candidate_mass (`float`, *optional*, defaults to `0.95`):
            Student probability mass the candidate set covers.
        alignment_max_candidates (`int`, *optional*, defaults to `8`):
            Cap on the student's own candidates per node.
        alignment_teacher_top_tokens (`int`, *optional*, defaults to `1`):
            Top tokens of each teacher added to the candidates.
        alignment_params (`str`, *optional*, defaults to `"trainable"`):
            Parameter space: `"trainable"` (LoRA adapters under PEFT, every weight otherwise), `"all"`, or a regular
            expression over parameter names (a user-chosen subset, e.g. `"mlp"`).
        alignment_max_vectors (`int`, *optional*, defaults to `64`):
            Parameter-space vectors per backward pass (bounds probe memory).
        alignment_sketch_dim (`int`, *optional*):
            CountSketch dimension replacing exact inner products.
        alignment_num_bootstrap (`int`, *optional*, defaults to `200`):
            Likelihood-boundary points searched per node for its profile-likelihood interval (name kept from the
            bootstrap it replaced); 0 turns per-node intervals off.
        alignment_confidence (`float`, *optional*, defaults to `0.95`):
            Level of every interval.
        alignment_correct_threshold (`float`, *optional*, defaults to `0.5`):
            A rollout whose reward is at least this counts as correct (for the correct / incorrect split).
        alignment_reward_funcs (`list[str]`, *optional*, defaults to `["numeric"]`):
            Verifiers of rollouts and targeted rollouts, as TRL's GRPO script takes `reward_funcs`. Each entry is a
            built-in verifier reading `alignment_answer_column`: `"numeric"` (final number equals the reference),
            `"choice"` (first yes/no or option-letter answer equals the reference), `"exact"` (whole completion
            equals the reference, up to case and whitespace), `"regex"` (the reference is a regular expression found
            in the completion); a reward function of `trl.rewards` by name (e.g. `"think_format_reward"`); or the
            dotted import path of a function `f(prompts, completions, **columns) -> list[float | None]` (e.g.
            `"my_lib.rewards.custom_reward"`). Several entries are summed as GRPO sums them, leaving out `None`s; a
            completion every function returns `None` for is unscorable. Unknown names are errors at start-up. A
            `reward_func` passed to [`GradientAlignmentCallback`] replaces them.
        alignment_reward_weights (`list[float]`, *optional*):
            One weight per `alignment_reward_funcs` entry in that sum (GRPO's `reward_weights`); 1.0 each when unset.
        alignment_answer_column (`str`, *optional*, defaults to `"answer"`):
            Dataset column with the reference answer (read by the built-in verifiers; every column is available to
            reward functions).
        alignment_trainer_teacher (`str`, *optional*, defaults to `"teacher"`):
            Name of the trainer's own teacher in metrics; empty to leave it out.
        alignment_extra_teachers (`list[str]`, *optional*, defaults to `[]`):
            Extra teacher models as `"name=path_or_hub_id"` (same vocabulary as the student).
        alignment_self_contexts (`list[str]`, *optional*, defaults to `[]`):
            Self-distillation contexts as `"name:weights=template"` (see [`SelfContext`]).
        alignment_seed (`int`, *optional*, defaults to `0`):
            Seed of every choice the diagnostic makes (rollouts, nodes, targeted rollouts, bootstrap); mixed with the
            step so that pauses differ.
        alignment_output_subdir (`str`, *optional*, defaults to `"gad"`):
            Sub-directory of `output_dir` for records (and TensorBoard when the trainer has none).
        alignment_write_records (`bool`, *optional*, defaults to `True`):
            Write per-node records (`records/step_XXXXXX.parquet`).
        alignment_histograms (`bool`, *optional*, defaults to `True`):
            Write per-teacher histograms of per-node alignment to TensorBoard.
    """

    alignment_every_n_steps: int = field(default=50, metadata={"help": "Pause every this many optimizer steps."})
    alignment_rollouts_per_pause: int = field(default=4, metadata={"help": "Student rollouts diagnosed per pause."})
    alignment_nodes_per_rollout: int = field(default=4, metadata={"help": "Nodes diagnosed per rollout."})
    alignment_node_strategy: str = field(
        default="entropy", metadata={"help": "Node selection: 'entropy', 'uniform' or 'depth_windows'."}
    )
    alignment_targeted_rollouts: int = field(default=8, metadata={"help": "Targeted rollouts per candidate token."})
    alignment_allocation: str = field(default="uniform", metadata={"help": "'uniform' or 'adaptive'."})
    alignment_min_rollouts: int = field(
        default=4, metadata={"help": "First-round rollouts per candidate (adaptive allocation)."}
    )
    alignment_target_width: float = field(
        default=0.5, metadata={"help": "Adaptive allocation stops a node at this interval width."}
    )
    alignment_screen_rollouts: int = field(
        default=1, metadata={"help": "Screening rollouts per candidate; a node whose screen is all alike may stop."}
    )
    alignment_screen_keep: float = field(
        default=0.25, metadata={"help": "Probability of finishing a node whose screen was all alike (weight 1/p)."}
    )
    alignment_reuse_rollout_outcome: bool = field(
        default=False, metadata={"help": "Count the rollout's own outcome as a sample of its sampled token."}
    )
    alignment_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Longest targeted continuation (default: the trainer's completion length)."}
    )
    alignment_candidate_mass: float = field(default=0.95, metadata={"help": "Student mass the candidates cover."})
    alignment_max_candidates: int = field(default=8, metadata={"help": "Cap on the student's own candidates."})
    alignment_teacher_top_tokens: int = field(default=1, metadata={"help": "Teacher top tokens added to candidates."})
    alignment_params: str = field(
        default="trainable", metadata={"help": "'trainable', 'all', or a regex over parameter names."}
    )
    alignment_max_vectors: int = field(default=64, metadata={"help": "Parameter-space vectors per backward pass."})
    alignment_sketch_dim: int | None = field(default=None, metadata={"help": "CountSketch dimension (optional)."})
    alignment_num_bootstrap: int = field(
        default=200, metadata={"help": "Likelihood-boundary points per node interval (0: no per-node interval)."}
    )
    alignment_confidence: float = field(default=0.95, metadata={"help": "Level of every interval."})
    alignment_correct_threshold: float = field(
        default=0.5, metadata={"help": "Reward at or above which a rollout is correct."}
    )
    alignment_reward_funcs: list[str] = field(
        default_factory=lambda: ["numeric"],
        metadata={
            "help": "Verifiers: numeric, choice, exact, regex, a trl.rewards function name, or a dotted import path "
            "(my_lib.rewards.fn); several are summed."
        },
    )
    alignment_reward_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per alignment_reward_funcs entry (default: 1.0 each)."}
    )
    alignment_answer_column: str = field(default="answer", metadata={"help": "Column with the reference answer."})
    alignment_trainer_teacher: str = field(
        default="teacher", metadata={"help": "Name of the trainer's own teacher; empty to leave it out."}
    )
    alignment_extra_teachers: list[str] = field(
        default_factory=list, metadata={"help": "Extra teachers as 'name=path_or_hub_id'."}
    )
    alignment_self_contexts: list[str] = field(
        default_factory=list, metadata={"help": "Self-distillation contexts as 'name:weights=template'."}
    )
    alignment_seed: int = field(default=0, metadata={"help": "Seed of every choice the diagnostic makes."})
    alignment_output_subdir: str = field(default="gad", metadata={"help": "Sub-directory of output_dir."})
    alignment_write_records: bool = field(default=True, metadata={"help": "Write per-node records."})
    alignment_histograms: bool = field(default=True, metadata={"help": "Write alignment histograms."})

    def __post_init__(self):
        if self.alignment_every_n_steps < 1:
            raise ValueError(f"alignment_every_n_steps must be >= 1, got {self.alignment_every_n_steps}.")
        if self.alignment_rollouts_per_pause < 1 or self.alignment_nodes_per_rollout < 1:
            raise ValueError("alignment_rollouts_per_pause and alignment_nodes_per_rollout must be >= 1.")
        if self.alignment_node_strategy not in STRATEGIES:
            raise ValueError(
                f"alignment_node_strategy must be one of {STRATEGIES}, got {self.alignment_node_strategy!r}."
            )
        # A YAML scalar (`alignment_reward_funcs: choice`) is a one-entry list, as on the command line.
        if isinstance(self.alignment_reward_funcs, str):
            self.alignment_reward_funcs = [self.alignment_reward_funcs]
        if isinstance(self.alignment_reward_weights, (int, float)):
            self.alignment_reward_weights = [float(self.alignment_reward_weights)]
        # Resolved now: an unknown name or an unimportable path fails at start-up, not at the first pause.
        self.reward_func = build_reward_func(
            self.alignment_reward_funcs, self.alignment_answer_column, self.alignment_reward_weights
        )
        self.self_contexts = [SelfContext.parse(s) for s in self.alignment_self_contexts]
        self.extra_teachers = parse_named_models(self.alignment_extra_teachers, "alignment_extra_teachers")
        names = [c.name for c in self.self_contexts] + list(self.extra_teachers)
        if self.alignment_trainer_teacher:
            names.append(self.alignment_trainer_teacher)
        if len(set(names)) != len(names):
            raise ValueError(f"Teacher and context names must be unique, got {names}.")
        try:
            self.diagnosis()  # validates the estimator's knobs now, not at the first pause
        except ValueError as err:
            # Name the keys the user wrote (`alignment_targeted_rollouts`), not the estimator's (`num_rollouts`).
            message = str(err).replace("DiagnosisConfig", "GradientAlignmentConfig")
            for key, inner in _DIAGNOSIS_KEYS.items():
                message = re.sub(rf"\b{inner}=", f"{key}=", message)
            raise ValueError(message) from None

    def pass_settings(self, max_completion_length: int | None = None) -> PassSettings:
        return PassSettings(
            nodes_per_rollout=self.alignment_nodes_per_rollout,
            node_strategy=self.alignment_node_strategy,
            correct_threshold=self.alignment_correct_threshold,
            max_completion_length=max_completion_length,
        )

    def diagnosis(self, max_new_tokens: int | None = None, temperature: float = 1.0) -> DiagnosisConfig:
        """The estimator's configuration for one pause (`max_new_tokens`/`temperature` come from the trainer)."""
        knobs = {inner: getattr(self, key) for key, inner in _DIAGNOSIS_KEYS.items()}
        knobs["max_new_tokens"] = self.alignment_max_new_tokens or max_new_tokens or 256
        return DiagnosisConfig(temperature=temperature, **knobs)
