"""One diagnostic pass over student rollouts, the function both the callback and the `gad` CLI call.

For each rollout: verify it (correct / incorrect), choose nodes, read every teacher's logits at them. Then the
diagnosis (targeted rollouts, directions, cosines) runs on the nodes of several rollouts at once, so that their
targeted continuations decode in full batches: on a real model a decode step costs nearly as much for 8 rows as for
32, so rollouts decoded one by one paid for mostly empty batches. Each node still draws only from its own rollout's
seed. Returns plain rows: one per (node, teacher), one per rollout, and the counted reasons for anything skipped.
Nothing here knows about trainers.

A bad value costs only what it touches, and is counted: an unscorable verdict (NaN / inf / None reward) skips its
rollout, an unscorable targeted continuation is left out of its candidate's estimate, a non-finite student or
teacher makes its nodes undefined. Each kind of trouble gets one warning per pass: how often, and the first case.
"""

import dataclasses
import logging
import math
from collections import Counter
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from ..engine.model_io import eos_token_ids, logits_at
from ..engine.rollouts import ScoreError, checked_scores
from ..engine.verifiers import as_score, reward_function_score
from ..method.nodes import STRATEGIES, entropy, select_nodes
from ..method.streams import derive_seed, stream
from .diagnose import diagnose_nodes
from .inputs import DiagnosisConfig, Node
from .results import Diagnosis, node_records
from .teachers import Rollout, TeacherSource


logger = logging.getLogger(__name__)


@dataclass
class PassSettings:
    """
    How a pass picks and judges what it diagnoses.

    Args:
        nodes_per_rollout (`int`, *optional*, defaults to `4`): Nodes per rollout.
        node_strategy (`str`, *optional*, defaults to `"entropy"`): `"entropy"`, `"uniform"` or `"depth_windows"`
            (the callback's and the CLI's default too: see `GradientAlignmentConfig.alignment_node_strategy`).
        correct_threshold (`float`, *optional*, defaults to `0.5`): Reward at or above which a rollout is correct.
        max_completion_length (`int`, *optional*): The completion budget; a node at position `t` gets
            `max_completion_length - t - 1` tokens of targeted continuation (the student's own remaining budget).
    """

    nodes_per_rollout: int = 4
    node_strategy: str = "entropy"
    correct_threshold: float = 0.5
    max_completion_length: int | None = None

    def __post_init__(self):
        if self.node_strategy not in STRATEGIES:
            raise ValueError(f"node_strategy must be one of {STRATEGIES}, got {self.node_strategy!r}.")
        if self.nodes_per_rollout < 1:
            raise ValueError(f"nodes_per_rollout must be >= 1, got {self.nodes_per_rollout}.")


@dataclass
class PassResult:
    rows: list[dict] = field(default_factory=list)
    rollouts: list[dict] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def merge_results(results: list[PassResult]) -> PassResult:
    """Several passes' results as one, rows in rollout order (`"<step>-<i>"` keys), skips summed."""

    def order(key):
        head, _, tail = str(key).rpartition("-")
        return (head, int(tail)) if tail.isdigit() else (str(key), 0)

    merged = PassResult()
    for r in results:
        merged.rows += r.rows
        merged.rollouts += r.rollouts
        merged.skipped.update(r.skipped)
    merged.rows.sort(key=lambda row: (order(row["rollout_id"]), row["position"]))
    merged.rollouts.sort(key=lambda row: order(row["rollout_id"]))
    return merged


def verify_rollout(reward_func, tokenizer, rollout: Rollout) -> float:
    """
    The verifier's reward for a whole rollout (TRL reward-function calling convention); NaN when it is unscorable
    (`None`, NaN or inf).
    """
    text = tokenizer.decode(rollout.completion_ids, skip_special_tokens=True)
    completion = [{"role": "assistant", "content": text}] if isinstance(rollout.prompt, list) else text
    columns = {k: [v] for k, v in rollout.row.items()}
    return as_score(
        reward_func(
            prompts=[rollout.prompt], completions=[completion], completion_ids=[rollout.completion_ids], **columns
        )[0]
    )


class _Trouble:
    """What went wrong in a pass, per kind: how often, out of how many, and the first case (never a list of all)."""

    # kind: (what it is counted out of, the message)
    KINDS = {
        "verifier_error": ("rollouts", "the verifier raised on {n} of {total} rollouts (skipped)"),
        "unscorable_reward": ("rollouts", "{n} of {total} rollouts had a NaN/inf/None reward (unscorable, skipped)"),
        "non_finite_student": (
            "nodes",
            "the student's logits were NaN/inf at {n} of {total} nodes (undefined for every teacher: "
            "non_finite_student; a rollout with no other node is skipped)",
        ),
        "non_finite_teacher": (
            "pairs",
            "{n} of {total} (node, teacher) pairs had NaN/inf teacher logits (undefined: non_finite_teacher)",
        ),
        "unscorable_continuation": (
            "continuations",
            "{n} of {total} targeted continuations had a NaN/inf/None reward or a non-finite student (unscorable, "
            "excluded from the success estimates)",
        ),
        "unscorable_continuations": (
            "nodes",
            "{n} of {total} nodes had a candidate without any scored continuation (undefined: "
            "unscorable_continuations)",
        ),
    }

    def __init__(self):
        self.count, self.total, self.first = Counter(), Counter(), {}

    def add(self, kind: str, first: str, n: int = 1) -> None:
        if n > 0:
            self.count[kind] += n
            self.first.setdefault(kind, first)

    def warn(self) -> None:
        for kind, n in self.count.items():
            unit, message = self.KINDS[kind]
            logger.warning("gad: %s; first: %s", message.format(n=n, total=self.total[unit]), self.first[kind])

    def note_nodes(self, diagnosis: Diagnosis, node_meta: list[dict]) -> None:
        """Count what went wrong at each node of one rollout's diagnosis."""
        for node, meta in zip(diagnosis.nodes, node_meta, strict=True):
            where = f"rollout {meta['rollout_id']}, position {meta['position']}"
            reasons = list(node.undefined.items())
            self.total.update(nodes=1, pairs=len(node.teachers), continuations=node.rollouts_spent)
            if reasons and all(r == "non_finite_student" for _, r in reasons):
                self.add("non_finite_student", where)
                continue
            self.add("unscorable_continuation", where, int(node.success.unscorable.sum()))
            self.add("unscorable_continuations", where, int(any(r == "unscorable_continuations" for _, r in reasons)))
            for teacher, reason in reasons:
                if reason == "non_finite_teacher":
                    self.add("non_finite_teacher", f"teacher {teacher!r}, {where}")


def _rollout_groups(count, nodes_per_rollout, num_teachers, config):
    """
    Consecutive rollouts diagnosed together: as many as the first round of targeted continuations of their nodes fits
    in one decode batch (`max_batch_rows`), which also bounds the prefix caches held at once.
    """
    rows = nodes_per_rollout * (config.max_candidates + 1 + num_teachers * config.teacher_top) * config.first_round
    # At most 16: a group holds every rollout's prefix cache and its nodes' vocabulary-sized vectors at once.
    size = min(16, max(1, config.max_batch_rows // max(rows, 1)))
    return [list(range(i, min(i + size, count))) for i in range(0, count, size)]


def _guarded(score, failures: dict, key):
    """
    `score` for continuations decoded alongside other rollouts': the first verifier failure on this rollout is kept
    in `failures[key]` and its continuations are left unscored, so that the other rollouts of the batch go on. (The
    failed rollout's nodes still decode their remaining rounds, then are dropped: bounded waste, on an error path.)
    """

    def guarded(continuations):
        if key not in failures:
            try:
                return checked_scores(score, continuations).tolist()
            except ScoreError as err:
                failures[key] = err
        return [None] * len(continuations)

    return guarded


def _rollout_nodes(student, tokenizer, rollout, reward, i, teachers, reward_func, config, settings, step) -> dict:
    """One rollout's nodes (chosen from its own seed) with every teacher's logits at them, and their records' fields."""
    rollout_id = rollout.key or f"{step}-{i}"
    seed = rollout.seed if rollout.seed is not None else derive_seed(config.seed, "rollout", i)
    # Every choice on this rollout comes from its own seed, so results do not depend on the other rollouts in the
    # pass (nor on which process diagnoses it); node choice and the diagnosis draw from separate streams.
    generator = stream(seed, "node_selection")
    seq = torch.tensor(rollout.prompt_ids + rollout.completion_ids)
    p, length = len(rollout.prompt_ids), len(rollout.completion_ids)
    entropies = None
    if settings.node_strategy == "entropy":
        entropies = entropy(logits_at(student, seq, range(p - 1, p + length - 1)), config.temperature)
        # A position where the student is NaN has no entropy: weigh it as an average one, so that it can still be
        # picked and show up as an undefined node instead of vanishing from the sample.
        finite = torch.isfinite(entropies)
        entropies = torch.where(finite, entropies, entropies[finite].mean() if bool(finite.any()) else 1.0)
    positions = select_nodes(
        length, settings.nodes_per_rollout, settings.node_strategy, entropies=entropies, generator=generator
    ).tolist()
    teacher_logits = {t.name: t.logits(rollout, positions) for t in teachers}
    columns = {k: v for k, v in rollout.row.items() if k != "prompt"}
    tokens = [tokenizer.decode([t]) for t in rollout.completion_ids]
    correct = reward >= settings.correct_threshold
    limit = settings.max_completion_length
    diagnosis_seed = derive_seed(seed, "diagnosis")
    nodes, meta = [], []
    for j, t in enumerate(positions):
        score = reward_function_score(reward_func, tokenizer, rollout.prompt, rollout.completion_ids[:t], columns)
        budget = None if limit is None else max(limit - t - 1, 0)
        logits = {n: v[j] for n, v in teacher_logits.items()}
        nodes.append(
            Node(
                0,
                p + t,
                logits,
                score,
                max_new_tokens=budget,
                observed_score=reward,
                seed=derive_seed(diagnosis_seed, p + t),
            )
        )
        meta.append(
            {
                "rollout_id": rollout_id,
                "question_id": rollout.row_index,
                "reward": reward,
                "correct": correct,
                "position": t,
                "completion_length": length,
                "rel_position": t / max(length - 1, 1),
                "token_text": tokens[t],
            }
        )
    return {
        "rollout": rollout,
        "id": rollout_id,
        "sequence": seq,
        "nodes": nodes,
        "meta": meta,
        "tokens": tokens,
        "prompt_text": tokenizer.decode(rollout.prompt_ids, skip_special_tokens=True),
        "reward": reward,
        "correct": correct,
    }


def _add_rollout(result, trouble, prepared, diagnosis, failure, step):
    """One rollout's rows and counted troubles, or its skip (the verifier failed on its targeted continuations)."""
    rollout, rollout_id, meta = prepared["rollout"], prepared["id"], prepared["meta"]
    if failure is not None:  # as when the verifier fails on the rollout itself
        result.skipped["verifier_error"] += 1
        trouble.add("verifier_error", f"rollout {rollout_id} (targeted continuations): {str(failure):.200}")
        return
    trouble.note_nodes(diagnosis, meta)
    unscorable = sum(int(n.success.unscorable.sum()) for n in diagnosis.nodes)
    if unscorable:
        result.skipped["unscorable_continuation"] += unscorable
    # Rollout-level results exist where at least one node was measured; none: the student is NaN at every node.
    if meta and not diagnosis.rollouts:
        result.skipped["non_finite_student"] += 1
        return
    result.rows += node_records(diagnosis, meta, step)
    result.rollouts.append(
        {
            "step": step,
            "rollout_id": rollout_id,
            "question_id": rollout.row_index,
            "prompt_text": prepared["prompt_text"],
            "completion_tokens": prepared["tokens"],
            "reward": prepared["reward"],
            "correct": prepared["correct"],
        }
    )


def diagnose_rollouts(
    student,
    tokenizer,
    rollouts: list[Rollout],
    teachers: list[TeacherSource],
    reward_func,
    config: DiagnosisConfig,
    settings: PassSettings,
    *,
    step: int = 0,
    progress: bool = False,
) -> PassResult:
    """
    Diagnose every teacher on the same nodes of `rollouts`.

    Args:
        student (`torch.nn.Module`): The student (unwrapped; plain or PEFT).
        tokenizer: The student's tokenizer (decodes completions for the verifier and the records).
        rollouts (`list[Rollout]`): The rollouts.
        teachers (`list[TeacherSource]`): The teachers, each with its loss.
        reward_func (`Callable`): TRL-style reward function verifying completions.
        config ([`DiagnosisConfig`]): The estimator's knobs (not modified). A rollout without its own `seed`
            gets one derived from `config.seed` and its index; node choice and diagnosis draw from separate streams
            derived from the rollout's seed.
        settings ([`PassSettings`]): Node choice and correctness threshold.
        step (`int`, *optional*, defaults to `0`): Training step (or pass index) stamped on every row.
        progress (`bool`, *optional*, defaults to `False`): Show a progress bar over rollouts.

    Returns:
        [`PassResult`]: node rows, rollout rows, and counted skips: rollouts (`unknown_prompt`, `empty_rollout`,
        `verifier_error`, `unscorable_reward`, `non_finite_student`: the student's logits are NaN/inf at every node)
        and targeted continuations (`unscorable_continuation`). Nodes are never dropped: an undefined one is a row
        with its reason in `undefined`.
    """
    result, trouble = PassResult(), _Trouble()
    usable = []
    for index, rollout in enumerate(rollouts):
        if rollout.row is None:
            result.skipped["unknown_prompt"] += 1
            continue
        if not rollout.completion_ids:
            result.skipped["empty_rollout"] += 1
            continue
        trouble.total["rollouts"] += 1
        name = rollout.key or f"#{index} of the pass"
        try:
            reward = verify_rollout(reward_func, tokenizer, rollout)
        except Exception as err:  # a raising verifier skips the rollout, counted, instead of failing the pass
            result.skipped["verifier_error"] += 1
            trouble.add("verifier_error", f"rollout {name}: {type(err).__name__}: {str(err):.200}")
            continue
        if math.isnan(reward):
            result.skipped["unscorable_reward"] += 1
            trouble.add("unscorable_reward", f"rollout {name}")
            continue
        usable.append((rollout, reward))
    # Targeted continuations stop where the trainer's completions stop (TRL's end-of-sequence set).
    eos = config.eos_token_id if config.eos_token_id is not None else eos_token_ids(student, tokenizer)
    pass_config = dataclasses.replace(config, eos_token_id=eos)
    with tqdm(total=len(usable), desc=f"gad step {step}", leave=False, disable=not progress) as bar:
        for group in _rollout_groups(len(usable), settings.nodes_per_rollout, len(teachers), config):
            _diagnose_group(
                student,
                tokenizer,
                [usable[i] + (i,) for i in group],
                teachers,
                reward_func,
                pass_config,
                settings,
                step,
                result,
                trouble,
            )
            bar.update(len(group))
    trouble.warn()
    return result


def _diagnose_group(student, tokenizer, group, teachers, reward_func, config, settings, step, result, trouble):
    """
    Diagnose `group` (`(rollout, reward, index)` triples) in one `diagnose_nodes` call, so that the targeted
    continuations of all their nodes decode in full batches; each node draws from its own rollout's seed, and a
    verifier failing on one rollout's continuations skips that rollout only. Rows and skips go into `result`.
    """
    prepared = [
        _rollout_nodes(student, tokenizer, rollout, reward, i, teachers, reward_func, config, settings, step)
        for rollout, reward, i in group
    ]
    failures: dict[int, ScoreError] = {}
    nodes = [
        dataclasses.replace(node, sequence=k, score=_guarded(node.score, failures, k))
        for k, rollout_nodes in enumerate(prepared)
        for node in rollout_nodes["nodes"]
    ]
    losses = {t.name: t.loss for t in teachers}
    diagnosis = diagnose_nodes(student, [r["sequence"] for r in prepared], nodes, losses, config)
    offset = 0
    for k, rollout_nodes in enumerate(prepared):
        n = len(rollout_nodes["nodes"])
        own = Diagnosis(diagnosis.nodes[offset : offset + n], [r for r in diagnosis.rollouts if r.sequence == k])
        offset += n
        _add_rollout(result, trouble, rollout_nodes, own, failures.get(k), step)
