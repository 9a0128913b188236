"""One diagnostic pass over nodes of student rollouts: candidates -> directions -> Gram -> targeted rollouts -> cosines.

This is the function the callback and the command-line diagnostic both call; it knows nothing about trainers. Follow
one node through `diagnose_nodes`:

1. the student's logits at the node (one no-grad forward per rollout);
2. the candidate set `K(u)`: the student's top tokens, the sampled token, every teacher's top token;
3. every teacher's direction `b_T` (its loss's own gradient, by autograd); a teacher whose distribution equals the
   student's (total variation below `zero_tol`) gets none;
4. one forward with grad per rollout and one batched backward per group of nodes -> the node Gram matrix of
   `J^T e_k` (k in K) and `J^T b_T`. It does not depend on the rollouts, so it comes first: the ideal lives on the
   candidate basis, and every parameter-space number of the node, for any success rates, follows from it;
5. targeted rollouts for all nodes at once -> `S_hat_k` with counts: uniformly, or adaptively (a first round, then
   rounds allocated where the noise of the ideal shrinks most, until each node's intervals are narrow enough);
6. per node (`method/alignment.py`): cosines, profile-likelihood intervals (`method/intervals.py`), the unbiased
   pooled-alignment terms, restricted cosines, outside shares, teacher advantages.

All teachers are scored on the same nodes against the same `a_hat`, so their differences are paired.
"""

import math
from collections.abc import Callable

import torch

from ..engine.model_io import eos_token_ids, logits_at, model_device
from ..engine.rollouts import RolloutRequest, rollout_requests
from ..engine.vjp import parameter_gram
from ..method.alignment import (
    ideal_cosines,
    ideal_norm2,
    ideal_on_candidates,
    logit_gram,
    node_value,
    outside_share,
    restricted_cosine,
    span_cosines,
    teacher_advantage,
    teacher_projections,
)
from ..method.allocation import neyman_counts
from ..method.directions import check_logits, ideal_direction
from ..method.intervals import cosine_intervals, region_has_flat
from ..method.nodes import candidate_set
from ..method.streams import stream
from ..method.success import SuccessEstimate, pad_rows
from .inputs import DiagnosisConfig, Node, TeacherLoss
from .results import Diagnosis, NodeDiagnosis, RolloutAlignment, TeacherAlignment


def _student_logits(model, sequences, nodes) -> list[torch.Tensor]:
    """Next-token logits at every node, one no-grad forward per rollout (float32, CPU)."""
    out: list[torch.Tensor | None] = [None] * len(nodes)
    by_sequence: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        by_sequence.setdefault(node.sequence, []).append(i)
    for seq, idxs in by_sequence.items():
        logits = logits_at(model, sequences[seq], [nodes[i].prefix_len - 1 for i in idxs])
        for j, i in enumerate(idxs):
            out[i] = logits[j]
    return out


def _check_nodes(sequences, nodes, names):
    for i, node in enumerate(nodes):
        if not 0 <= node.sequence < len(sequences):
            raise ValueError(
                f"Node {i} points at sequence {node.sequence}, but {len(sequences)} sequences were given."
            )
        if not 1 <= node.prefix_len <= sequences[node.sequence].numel():
            raise ValueError(f"Node {i} has prefix_len {node.prefix_len}, outside [1, sequence length].")
        if set(node.teacher_logits) != set(names):
            raise ValueError(
                f"Node {i} has logits for teachers {sorted(node.teacher_logits)} but losses for {sorted(names)}; "
                "give every teacher's logits at every node."
            )
        if node.success is None and node.score is None:
            raise ValueError(f"Node {i} has neither a `score` function nor a known `success` estimate.")


def _vector_layout(nodes_of_seq, num_teachers, max_vectors):
    """Row index of every vector of one rollout, and groups of vectors that need their mutual products."""
    layout, groups, current, b = [], [], [], 0
    for k in nodes_of_seq:
        size = k + num_teachers
        idx = list(range(b, b + size))
        b += size
        layout.append(idx)
        if current and len(current) + size > max_vectors:
            groups.append(current)
            current = []
        current = current + idx
    groups.append(current)
    return layout, groups


def _by_sequence(nodes):
    out: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        out.setdefault(node.sequence, []).append(i)
    return out


def _param_grams(model, sequences, nodes, prepared, names, config):
    """
    Per node: Gram of `[J^T e_k for k in K] + [J^T b_T]`. Per rollout: the whole Gram when all its nodes fit in one
    backward group (the rollout-level cosine then needs no other pass), else None.
    """
    node_grams: list[torch.Tensor | None] = [None] * len(nodes)
    rollout_grams: dict[int, tuple[torch.Tensor, list] | None] = {}
    for seq, idxs in _by_sequence(nodes).items():
        vocab = prepared[idxs[0]]["student"].numel()
        layout, groups = _vector_layout(
            [prepared[i]["candidates"].numel() for i in idxs], len(names), config.max_vectors
        )
        cot = torch.zeros(layout[-1][-1] + 1, len(idxs), vocab)
        for r, (i, rows) in enumerate(zip(idxs, layout, strict=True)):
            cand = prepared[i]["candidates"]
            cot[torch.tensor(rows[: cand.numel()]), r, cand] = 1.0
            for t, name in enumerate(names):
                cot[rows[cand.numel() + t], r] = prepared[i]["directions"][name]
        positions = torch.tensor([nodes[i].prefix_len - 1 for i in idxs])
        length = max(nodes[i].prefix_len for i in idxs)
        gram = parameter_gram(
            model, sequences[seq][:length], positions, cot, config.params, groups=groups, sketch_dim=config.sketch_dim
        )
        for i, rows in zip(idxs, layout, strict=True):
            sel = torch.tensor(rows)
            node_grams[i] = gram[sel[:, None], sel[None, :]]
        rollout_grams[seq] = (gram, layout) if len(groups) == 1 else None
    return node_grams, rollout_grams


def _rollout_cosines(model, sequences, nodes, prepared, names, config, rollout_grams):
    """`cos(sum_u g_ideal(u), sum_u g_T(u))` per rollout, from its Gram, or from one more backward when it was split."""
    out = []
    m = len(names)
    for seq, idxs in _by_sequence(nodes).items():
        whole = rollout_grams[seq]
        if whole is not None:
            gram, layout = whole
            ideal = torch.zeros(gram.shape[0], dtype=torch.float64)
            teachers = torch.zeros(m, gram.shape[0], dtype=torch.float64)
            for i, rows in zip(idxs, layout, strict=True):
                k = prepared[i]["candidates"].numel()
                ideal[torch.tensor(rows[:k])] = prepared[i]["a_k"]
                for t in range(m):
                    teachers[t, rows[k + t]] = 1.0
            cos = span_cosines(gram, ideal[None], teachers)[0]
        else:
            vocab = prepared[idxs[0]]["student"].numel()
            cot = torch.zeros(1 + m, len(idxs), vocab)
            for r, i in enumerate(idxs):
                cot[0, r] = prepared[i]["ideal"]
                for t, name in enumerate(names):
                    cot[1 + t, r] = prepared[i]["directions"][name]
            positions = torch.tensor([nodes[i].prefix_len - 1 for i in idxs])
            length = max(nodes[i].prefix_len for i in idxs)
            gram = parameter_gram(
                model, sequences[seq][:length], positions, cot, config.params, sketch_dim=config.sketch_dim
            )
            cos = span_cosines(gram, torch.eye(1 + m)[:1], torch.eye(1 + m)[1:])[0]
        out.append(RolloutAlignment(seq, len(idxs), {n: float(c) for n, c in zip(names, cos, strict=True)}))
    return out


def _targeted_rollouts(model, sequences, nodes, prepared, config):
    """Success estimates of every node's candidates, uniformly or adaptively allocated (see `method/allocation.py`)."""
    todo = [i for i, node in enumerate(nodes) if node.success is None]
    if not todo:
        return
    generator = stream(config.seed, "targeted_rollouts", device=model_device(model))
    eos = config.eos_token_id if config.eos_token_id is not None else eos_token_ids(model)

    def run(batch):  # batch: {node index: counts per candidate}
        requests = [
            RolloutRequest(
                nodes[i].sequence,
                nodes[i].prefix_len,
                prepared[i]["candidates"],
                nodes[i].score,
                max_new_tokens=nodes[i].max_new_tokens,
                counts=counts,
            )
            for i, counts in batch.items()
        ]
        estimates = rollout_requests(
            model,
            sequences,
            requests,
            config.num_rollouts,
            config.max_new_tokens,
            temperature=config.temperature,
            eos_token_id=eos,
            generator=generator,
            max_batch_rows=config.max_batch_rows,
        )
        for i, estimate in zip(batch, estimates, strict=True):
            prev = prepared[i]["success"]
            prepared[i]["success"] = estimate if prev is None else prev.extend(estimate)

    for i in todo:
        prepared[i]["success"] = None
        observed = nodes[i].observed_score
        cand = prepared[i]["candidates"]
        if config.reuse_observed and observed is not None and prepared[i]["sampled"] in cand.tolist():
            rows = [torch.zeros(0, dtype=torch.float64)] * cand.numel()
            rows[cand.tolist().index(prepared[i]["sampled"])] = torch.tensor([float(observed)], dtype=torch.float64)
            prepared[i]["success"] = SuccessEstimate(cand, pad_rows(rows), torch.zeros(cand.numel(), dtype=torch.long))
            prepared[i]["reused"] = 1
    if config.allocation == "uniform":
        run({i: torch.full((prepared[i]["candidates"].numel(),), config.num_rollouts) for i in todo})
        return
    first = min(config.min_rollouts, config.num_rollouts)
    run({i: torch.full((prepared[i]["candidates"].numel(),), first) for i in todo})
    budgets = {i: config.num_rollouts * prepared[i]["candidates"].numel() for i in todo}
    for r in range(config.allocation_rounds):
        batch = {}
        for i in todo:
            prep = prepared[i]
            spent = int(prep["success"].count.sum())
            left = budgets[i] - spent
            if left <= 0 or _settled(prep, config):
                continue
            batch[i] = neyman_counts(
                prep["gram"], prep["p_k"], prep["success"], math.ceil(left / (config.allocation_rounds - r))
            )
        if not batch:
            break
        run(batch)


def _settled(prep, config) -> bool:
    """
    Whether a node needs no more rollouts: every continuation so far ended the same way (all verified right, or
    all wrong: most likely nothing to learn there, and more rollouts would only resolve tiny differences), or every
    teacher's parameter-space interval is already at most `target_width` wide.
    """
    scores = prep["success"].scores
    observed = scores[~torch.isnan(scores)]
    if observed.numel() and bool((observed == observed[0]).all()):
        return True
    lo, hi = cosine_intervals(
        prep["gram"],
        prep["p_k"],
        prep["success"],
        config.confidence,
        num_points=64,
        rounds=2,
        generator=stream(config.seed, "allocation", prep["node_id"], int(prep["success"].count.sum())),
    )
    width = hi - lo
    width = width[~torch.isnan(width)]
    return width.numel() == 0 or bool((width <= config.target_width).all())


def diagnose_nodes(
    model: torch.nn.Module,
    sequences: list[torch.Tensor],
    nodes: list[Node],
    teacher_losses: dict[str, TeacherLoss],
    config: DiagnosisConfig | None = None,
) -> Diagnosis:
    """
    Diagnose many nodes of many rollouts in one pass: targeted rollouts of every node decode together, and every
    rollout takes one forward for its nodes' parameter-space products.

    Args:
        model (`torch.nn.Module`):
            The student (causal LM, plain or PEFT). Left exactly as found (modes, `.grad`, `requires_grad`).
        sequences (`list[torch.Tensor]`):
            Rollouts as 1-D token ids (prompt + completion).
        nodes (`list[Node]`):
            The nodes, with each teacher's logits at the node.
        teacher_losses (`dict[str, TeacherLoss]`):
            Each teacher's loss, by the short name used in every metric.
        config ([`DiagnosisConfig`], *optional*):
            Knobs; defaults when omitted.

    Returns:
        [`Diagnosis`]: one [`NodeDiagnosis`] per node (same order) and one [`RolloutAlignment`] per rollout.
    """
    config = config or DiagnosisConfig()
    names = list(teacher_losses)
    sequences = [torch.as_tensor(s).reshape(-1).long() for s in sequences]
    _check_nodes(sequences, nodes, names)
    if not nodes:
        return Diagnosis([], [])
    student = _student_logits(model, sequences, nodes)

    prepared = []
    for node, z in zip(nodes, student, strict=True):
        # A teacher without logits at a node (e.g. a position the trainer's loss skips) gives no signal there.
        teacher = {n: None if v is None else v.reshape(-1).float().cpu() for n, v in node.teacher_logits.items()}
        for n, logits in teacher.items():
            if logits is None:
                continue
            if logits.numel() != z.numel():
                raise ValueError(
                    f"Teacher {n!r} has {logits.numel()} logits, the student {z.numel()}: teachers must share the "
                    "student's vocabulary (same tokenizer)."
                )
            check_logits(f"teacher {n!r} logits", logits)
        seq = sequences[node.sequence]
        sampled = node.sampled_token
        if sampled is None and node.prefix_len < seq.numel():
            sampled = int(seq[node.prefix_len])
        if node.success is not None:
            candidates = node.success.candidates
        else:
            candidates = candidate_set(
                z,
                temperature=config.temperature,
                mass=config.mass,
                max_candidates=config.max_candidates,
                sampled_token=sampled,
                teacher_logits=[v for v in teacher.values() if v is not None] if config.teacher_top > 0 else [],
                teacher_top=max(config.teacher_top, 1),
            )
        p = torch.softmax(z.double() / config.temperature, dim=-1)
        prep = {"student": z, "candidates": candidates, "teacher": teacher, "sampled": sampled, "p": p}
        prep["node_id"] = (node.sequence, node.prefix_len)
        prep["p_k"], prep["success"] = p[candidates], node.success
        prep["directions"], prep["undefined"], prep["distance"] = {}, {}, {}
        for name, loss in teacher_losses.items():
            if teacher[name] is None:
                prep["directions"][name] = torch.zeros_like(z)
                prep["undefined"][name] = "no_signal"
                continue
            # "Teacher equals student" is a property of the two distributions (float64, as the loss sees them), not
            # of the size of b: b scales with 1 - p_max, so a confident student and a disagreeing teacher give a
            # small b, while float32 rounding of a 49k-way softmax gives a b of 1e-6 for a teacher that is the student.
            distance = loss.distance(z, teacher[name])
            prep["distance"][name] = distance
            if distance <= config.zero_tol:
                prep["directions"][name] = torch.zeros_like(z)
                prep["undefined"][name] = "teacher_matches_student"
                continue
            token = sampled if loss.loss == "sampled_token" else None
            if loss.loss == "sampled_token" and token is None:
                raise ValueError(f"Teacher {name!r} uses the sampled-token loss but a node has no sampled token.")
            prep["directions"][name] = loss.direction(z, teacher[name], token).float()
        prepared.append(prep)

    node_grams, rollout_grams = _param_grams(model, sequences, nodes, prepared, names, config)
    for prep, gram in zip(prepared, node_grams, strict=True):
        prep["gram"] = gram
    _targeted_rollouts(model, sequences, nodes, prepared, config)
    for prep in prepared:
        prep["ideal"] = ideal_direction(prep["student"], prep["candidates"], prep["success"].mean, config.temperature)
        prep["a_k"] = ideal_on_candidates(prep["p_k"], prep["success"].mean)
        if float(prep["a_k"].abs().max()) == 0.0:
            for name in names:
                prep["undefined"].setdefault(name, "flat_success")
    results = [
        _assemble(nodes[i], prepared[i], names, teacher_losses, config, spent)
        for i, spent in enumerate(_spent(nodes, prepared))
    ]
    rollouts = _rollout_cosines(model, sequences, nodes, prepared, names, config, rollout_grams)
    return Diagnosis(results, rollouts)


def _spent(nodes, prepared):
    """Targeted continuations decoded per node (a reused observed outcome and known estimates cost nothing)."""
    for node, prep in zip(nodes, prepared, strict=True):
        yield 0 if node.success is not None else int(prep["success"].count.sum()) - prep.get("reused", 0)


def _assemble(node, prep, names, teacher_losses, config, spent) -> NodeDiagnosis:
    cand, success, p, p_k, a_k = prep["candidates"], prep["success"], prep["p"], prep["p_k"], prep["a_k"]
    directions = [prep["directions"][n] for n in names]
    grams = {"param": prep["gram"], "logit": logit_gram(cand, directions)}
    count, variance = success.count, success.variance()
    diag = NodeDiagnosis(
        sequence=node.sequence,
        prefix_len=node.prefix_len,
        sampled_token=prep["sampled"],
        candidates=cand,
        success=success,
        value=float(node_value(p_k, success.mean)),
        student_probs=p_k.float(),
        ideal=prep["ideal"],
        directions=prep["directions"],
        undefined=dict(prep["undefined"]),
        gram=prep["gram"],
        ideal_norm2={space: ideal_norm2(g, p_k, success.mean, variance, count) for space, g in grams.items()},
        rollouts_spent=spent,
        region_flat=region_has_flat(success, config.confidence) if bool((count > 0).all()) else True,
    )
    cos, ci, proj = {}, {}, {}
    for space, g in grams.items():
        cos[space] = ideal_cosines(g, a_k[None])[0]
        proj[space] = teacher_projections(g, a_k)
        if config.num_bootstrap > 0 and bool((count > 0).all()):
            ci[space] = cosine_intervals(
                g,
                p_k,
                success,
                config.confidence,
                num_points=config.num_bootstrap,
                generator=stream(config.seed, "intervals", node.sequence, node.prefix_len, space),
            )
        else:
            nan = torch.full((len(names),), float("nan"), dtype=torch.float64)
            ci[space] = (nan, nan)
    for t, name in enumerate(names):
        b = prep["directions"][name]
        t_logits = prep["teacher"][name]
        # The teacher advantage asks what would happen if the student *acted* like the teacher: both policies at the
        # sampling temperature, whatever temperature the distillation loss uses.
        q = None if t_logits is None else torch.softmax(t_logits.double() / config.temperature, dim=-1)
        diag.teachers[name] = TeacherAlignment(
            param_cos=float(cos["param"][t]),
            param_ci=(float(ci["param"][0][t]), float(ci["param"][1][t])),
            logit_cos=float(cos["logit"][t]),
            logit_ci=(float(ci["logit"][0][t]), float(ci["logit"][1][t])),
            restricted_cos=float(restricted_cosine(prep["ideal"], b, cand, p)),
            outside_share=float(outside_share(b, cand)),
            advantage=float("nan") if q is None else float(teacher_advantage(p, q, cand, success.mean)),
            direction_norm=float(b.norm()),
            param_proj=float(proj["param"][t]),
            logit_proj=float(proj["logit"][t]),
            distance=prep["distance"].get(name, float("nan")),
        )
    return diag


def diagnose_node(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    prefix_len: int,
    teacher_logits: dict[str, torch.Tensor],
    teacher_losses: dict[str, TeacherLoss],
    score: Callable | None = None,
    config: DiagnosisConfig | None = None,
    *,
    success: SuccessEstimate | None = None,
) -> NodeDiagnosis:
    """
    Diagnose one node: the first `prefix_len` tokens of `input_ids` precede it. See [`diagnose_nodes`] for the
    batched form and the meaning of the arguments; `success` skips the rollouts (e.g. exact success probabilities).
    """
    node = Node(0, prefix_len, teacher_logits, score, success=success)
    return diagnose_nodes(model, [torch.as_tensor(input_ids)], [node], teacher_losses, config).nodes[0]
