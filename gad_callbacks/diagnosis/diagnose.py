"""One diagnostic pass over nodes of student rollouts: candidates -> targeted rollouts -> directions -> cosines.

This is the function the callback and the command-line diagnostic both call; it knows nothing about trainers. Follow
one node through `diagnose_nodes`:

1. the student's logits at the node (one no-grad forward per rollout);
2. the candidate set `K(u)`: the student's top tokens, the sampled token, every teacher's top token;
3. targeted rollouts for all nodes at once -> `S_hat_k` with counts;
4. the ideal direction `a_hat` and every teacher's `b_T` (its loss's own gradient, by autograd);
5. one forward with grad per rollout and one batched backward per group of nodes -> the Gram matrix of
   `J^T e_k` (k in K) and `J^T b_T`. `a_hat` lives on the candidate basis, so its parameter-space cosine with every
   teacher, and those of all its bootstrap replicates, follow exactly from that Gram matrix;
6. logit-space cosines, restricted cosines, outside shares, teacher advantages, bootstrap intervals.

All teachers are scored on the same nodes against the same `a_hat`, so their differences are paired.
"""

from collections.abc import Callable

import torch

from ..engine.model_io import logits_at, model_device
from ..engine.rollouts import RolloutRequest, rollout_requests
from ..engine.vjp import parameter_gram
from ..method.alignment import (
    ideal_on_candidates,
    outside_share,
    percentile_interval,
    restricted_cosine,
    span_cosines,
    teacher_advantage,
)
from ..method.directions import check_logits, ideal_direction
from ..method.nodes import candidate_set
from ..method.success import SuccessEstimate
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
    sums = list(range(b, b + 1 + num_teachers))
    groups.append(sums)
    return layout, sums, groups


def _param_grams(model, sequences, nodes, prepared, names, config):
    """Per node: Gram of [J^T e_k for k in K] + [J^T b_T]; per rollout: Gram of the summed ideal and teacher vectors."""
    node_grams: list[torch.Tensor | None] = [None] * len(nodes)
    rollout_grams: dict[int, tuple[torch.Tensor, int]] = {}
    by_sequence: dict[int, list[int]] = {}
    for i, node in enumerate(nodes):
        by_sequence.setdefault(node.sequence, []).append(i)
    m = len(names)
    for seq, idxs in by_sequence.items():
        vocab = prepared[idxs[0]]["ideal"].numel()
        layout, sums, groups = _vector_layout([prepared[i]["candidates"].numel() for i in idxs], m, config.max_vectors)
        cot = torch.zeros(sums[-1] + 1, len(idxs), vocab)
        for r, (i, rows) in enumerate(zip(idxs, layout, strict=True)):
            cand = prepared[i]["candidates"]
            cot[torch.tensor(rows[: cand.numel()]), r, cand] = 1.0
            for t, name in enumerate(names):
                cot[rows[cand.numel() + t], r] = prepared[i]["directions"][name]
            cot[sums[0], r] = prepared[i]["ideal"]
            for t, name in enumerate(names):
                cot[sums[1 + t], r] += prepared[i]["directions"][name]
        positions = torch.tensor([nodes[i].prefix_len - 1 for i in idxs])
        length = max(nodes[i].prefix_len for i in idxs)
        gram = parameter_gram(
            model, sequences[seq][:length], positions, cot, config.params, groups=groups, sketch_dim=config.sketch_dim
        )
        for i, rows in zip(idxs, layout, strict=True):
            sel = torch.tensor(rows)
            node_grams[i] = gram[sel[:, None], sel[None, :]]
        sel = torch.tensor(sums)
        rollout_grams[seq] = (gram[sel[:, None], sel[None, :]], len(idxs))
    return node_grams, rollout_grams


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

    # Candidates (METHOD.md step 1), then targeted rollouts for every node that has no known estimate.
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
        prepared.append({"candidates": candidates, "teacher": teacher, "sampled": sampled, "success": node.success})
    todo = [i for i, node in enumerate(nodes) if node.success is None]
    if todo:
        generator = torch.Generator(device=model_device(model)).manual_seed(config.seed)
        requests = [
            RolloutRequest(nodes[i].sequence, nodes[i].prefix_len, prepared[i]["candidates"], nodes[i].score)
            for i in todo
        ]
        estimates = rollout_requests(
            model,
            sequences,
            requests,
            config.num_rollouts,
            config.max_new_tokens,
            temperature=config.temperature,
            eos_token_id=getattr(model.config, "eos_token_id", None),
            generator=generator,
            max_batch_rows=config.max_batch_rows,
        )
        for i, estimate in zip(todo, estimates, strict=True):
            prepared[i]["success"] = estimate

    # Directions in logit space: the ideal from the estimates, each teacher's from its own loss.
    for i, z in enumerate(student):
        prep = prepared[i]
        prep["ideal"] = ideal_direction(z, prep["candidates"], prep["success"].mean, config.temperature)
        prep["directions"], prep["undefined"] = {}, {}
        for name, loss in teacher_losses.items():
            if prep["teacher"][name] is None:
                prep["directions"][name] = torch.zeros_like(prep["ideal"], dtype=torch.float32)
                prep["undefined"][name] = "no_signal"
                continue
            sampled = prep["sampled"] if loss.loss == "sampled_token" else None
            if loss.loss == "sampled_token" and sampled is None:
                raise ValueError(f"Teacher {name!r} uses the sampled-token loss but node {i} has no sampled token.")
            b = loss.direction(z, prep["teacher"][name], sampled)
            if float(b.abs().max()) <= config.zero_tol:
                b = torch.zeros_like(b)
                prep["undefined"][name] = "teacher_matches_student"
            prep["directions"][name] = b
        if float(prep["ideal"].abs().max()) == 0.0:
            for name in names:
                prep["undefined"].setdefault(name, "flat_success")

    node_grams, rollout_grams = _param_grams(model, sequences, nodes, prepared, names, config)
    bootstrap = torch.Generator().manual_seed(config.seed + 1)
    results = [
        _assemble(nodes[i], z, prepared[i], node_grams[i], names, teacher_losses, config, bootstrap)
        for i, z in enumerate(student)
    ]
    rollouts = []
    for seq, (gram, count) in rollout_grams.items():
        cos = span_cosines(gram, torch.eye(len(names) + 1)[:1], torch.eye(len(names) + 1)[1:])[0]
        rollouts.append(RolloutAlignment(seq, count, {n: float(c) for n, c in zip(names, cos, strict=True)}))
    return Diagnosis(results, rollouts)


def _assemble(node, z, prep, gram, names, teacher_losses, config, bootstrap) -> NodeDiagnosis:
    cand, success = prep["candidates"], prep["success"]
    p = torch.softmax(z.double() / config.temperature, dim=-1)
    k, m = cand.numel(), len(names)
    # Ideal coefficients on the candidate basis: the point estimate first, then bootstrap replicates.
    means = success.mean.unsqueeze(0)
    if config.num_bootstrap > 0:
        means = torch.cat([means, success.resample_means(config.num_bootstrap, bootstrap)])
    a_k = ideal_on_candidates(p[cand], means)  # [1 + B, K]
    coeff_ideal = torch.cat([a_k, torch.zeros(a_k.shape[0], m, dtype=a_k.dtype)], dim=1)
    coeff_teachers = torch.cat([torch.zeros(m, k, dtype=torch.float64), torch.eye(m, dtype=torch.float64)], dim=1)
    param = span_cosines(gram, coeff_ideal, coeff_teachers)  # [1 + B, M]

    diag = NodeDiagnosis(
        sequence=node.sequence,
        prefix_len=node.prefix_len,
        sampled_token=prep["sampled"],
        candidates=cand,
        success=success,
        value=float((p[cand] * success.mean).sum() / p[cand].sum()),
        student_probs=p[cand].float(),
        ideal=prep["ideal"],
        directions=prep["directions"],
        undefined=dict(prep["undefined"]),
    )
    for t, name in enumerate(names):
        b = prep["directions"][name]
        b_k = b.double()[cand]
        # Logit space: a* is supported on K, so <a*, b> only needs b on K; ||b|| is over the whole vocabulary.
        norms = a_k.norm(dim=1) * b.double().norm()
        logit = torch.where(norms > 0, (a_k @ b_k) / norms, torch.full_like(norms, float("nan"))).clamp(-1, 1)
        t_logits = prep["teacher"][name]
        q = None if t_logits is None else torch.softmax(t_logits.double() / teacher_losses[name].temperature, dim=-1)
        param_ci = percentile_interval(param[1:, t], config.confidence) if config.num_bootstrap else (param[0, t],) * 2
        logit_ci = percentile_interval(logit[1:], config.confidence) if config.num_bootstrap else (logit[0],) * 2
        diag.teachers[name] = TeacherAlignment(
            param_cos=float(param[0, t]),
            param_ci=(float(param_ci[0]), float(param_ci[1])),
            logit_cos=float(logit[0]),
            logit_ci=(float(logit_ci[0]), float(logit_ci[1])),
            restricted_cos=float(restricted_cosine(prep["ideal"], b, cand, p)),
            outside_share=float(outside_share(b, cand)),
            advantage=float("nan") if q is None else float(teacher_advantage(p, q, cand, success.mean)),
            direction_norm=float(b.norm()),
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
