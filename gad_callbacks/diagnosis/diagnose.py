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

A non-finite value spoils only what it touches: a node where the student's logits are NaN / inf is kept undefined
for every teacher (`non_finite_student`), a teacher whose logits are is undefined at that node only
(`non_finite_teacher`), and a candidate whose every continuation was unscorable leaves its node undefined
(`unscorable_continuations`). Everything else is measured as if they were not there.
"""

import dataclasses
import math
from collections.abc import Callable

import torch

from ..engine.model_io import eos_token_ids, logits_at, model_device
from ..engine.rollouts import RolloutRequest, rollout_requests
from ..method.alignment import (
    ideal_cosines,
    ideal_norm2,
    ideal_on_candidates,
    logit_gram,
    node_value,
    outside_share,
    restricted_cosine,
    teacher_advantage,
    teacher_projections,
)
from ..method.allocation import neyman_counts
from ..method.directions import ideal_direction
from ..method.intervals import cosine_intervals, region_has_flat
from ..method.nodes import candidate_set
from ..method.proxies import cheap_statistics
from ..method.streams import derive_seed, stream
from ..method.success import SuccessEstimate, pad_rows
from .inputs import DiagnosisConfig, Node, TeacherLoss, TrainerDirection
from .param_grams import param_grams, rollout_cosines
from .results import (
    Diagnosis,
    NodeDiagnosis,
    TeacherAlignment,
    add_absent_teachers,
    embed_gram,
    unmeasured_node,
)


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


def _check_nodes(sequences, nodes, losses):
    names = list(losses)
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
        for name, loss in losses.items():
            signal = node.teacher_logits[name]  # None (no signal here) goes with any loss
            if signal is not None and isinstance(signal, TrainerDirection) != (loss.loss == "trainer"):
                raise ValueError(
                    f"Node {i}, teacher {name!r}: a TrainerDirection goes with TeacherLoss('trainer') and only with it "
                    f"(the loss is {loss.loss!r})."
                )


def _targeted_rollouts(model, sequences, nodes, prepared, config):
    """Success estimates of every node's candidates, uniformly or adaptively allocated (see `method/allocation.py`)."""
    todo = [i for i, node in enumerate(nodes) if node.success is None]
    if not todo:
        return
    device = model_device(model)
    eos = config.eos_token_id if config.eos_token_id is not None else eos_token_ids(model)
    # One stream per node, kept across rounds: a node's continuations depend on its own seed only, not on which other
    # nodes (of this rollout or of others) decode in the same batch.
    generators = {i: stream(prepared[i]["seed"], "targeted_rollouts", device=device) for i in todo}

    def run(batch):  # batch: {node index: counts per candidate}
        requests = [
            RolloutRequest(
                nodes[i].sequence,
                nodes[i].prefix_len,
                prepared[i]["candidates"],
                nodes[i].score,
                max_new_tokens=nodes[i].max_new_tokens,
                counts=counts,
                generator=generators[i],
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
    first = config.first_round
    if config.allocation == "uniform":
        run({i: torch.full((prepared[i]["candidates"].numel(),), first) for i in todo})
        if first < config.num_rollouts:
            rest = [i for i in todo if _screen(prepared[i], config)]
            run({i: torch.full((prepared[i]["candidates"].numel(),), config.num_rollouts - first) for i in rest})
        return
    run({i: torch.full((prepared[i]["candidates"].numel(),), first) for i in todo})
    budgets = {i: config.num_rollouts * prepared[i]["candidates"].numel() for i in todo}
    for r in range(config.allocation_rounds):
        batch = {}
        for i in todo:
            prep = prepared[i]
            left = budgets[i] - prep["success"].decoded
            if left <= 0 or _settled(prep, config):
                continue
            batch[i] = neyman_counts(
                prep["gram"], prep["p_k"], prep["success"], math.ceil(left / (config.allocation_rounds - r))
            )
        if not batch:
            break
        run(batch)


def _all_alike(success: SuccessEstimate) -> bool:
    """Every candidate has a scored continuation and all of them ended the same way (all right, or all wrong)."""
    if bool((success.count == 0).any()):
        return False
    observed = success.scores[~torch.isnan(success.scores)]
    return bool((observed == observed[0]).all())


def _screen(prep, config) -> bool:
    """
    Whether a node gets the rest of its rollouts after screening; sets its pooled weight, or marks it stopped.

    Russian roulette keeps the pooled sums unbiased. Let `Y` be a node's pooled term (numerator or squared norm)
    from all its rollouts, and stop a node whose screen was all alike with probability `1 - q`, finishing it otherwise
    with weight `1 / q`: the term reported is `(I / pi) Y` with `pi = q` after an all-alike screen (1 otherwise) and
    `I` the coin, drawn independently of the rollouts still to come, so `E[(I / pi) Y | screen] = E[Y | screen]` and
    `E[(I / pi) Y] = E[Y]`. Plain early stopping (`q = 0`) would drop the nodes whose screen looked settled by
    chance, a bias toward whatever the clearly decided nodes say; the coin keeps a share of them, scaled back up.
    """
    if not _all_alike(prep["success"]):
        return True
    coin = torch.rand(1, generator=stream(prep["seed"], "screen"), dtype=torch.float64)
    if float(coin) < config.screen_keep:
        prep["pool_weight"] = 1.0 / config.screen_keep
        return True
    prep["screened_out"] = True
    return False


def _settled(prep, config) -> bool:
    """
    Whether a node needs no more rollouts: every continuation so far ended the same way (all verified right, or
    all wrong: most likely nothing to learn there, and more rollouts would only resolve tiny differences), or every
    teacher's parameter-space interval is already at most `target_width` wide.
    """
    if bool((prep["success"].count == 0).any()):
        return False  # a candidate without any scored continuation yet: nothing to build an interval on
    if _all_alike(prep["success"]):
        return True
    lo, hi = _intervals(
        prep["gram"],
        prep,
        config.confidence,
        num_points=64,
        rounds=2,
        generator=stream(prep["seed"], "allocation", int(prep["success"].count.sum())),
    )
    width = hi - lo
    width = width[~torch.isnan(width)]
    return width.numel() == 0 or bool((width <= config.target_width).all())


def _with_direction(prep) -> list[int]:
    """
    Indices of the teachers with a direction at the node. The others (undefined here) are left out of the node's
    logit-space products and interval searches, so that the rest come out exactly as they would without them.
    """
    return [t for t, b in enumerate(prep["directions"].values()) if bool(b.any())]


def _intervals(gram, prep, confidence, **search):
    """`cosine_intervals` over the teachers with a direction at the node, NaN for the others."""
    k = prep["candidates"].numel()
    rows = _with_direction(prep)
    keep = torch.tensor(list(range(k)) + [k + t for t in rows], dtype=torch.long)
    lo, hi = cosine_intervals(gram[keep[:, None], keep[None, :]], prep["p_k"], prep["success"], confidence, **search)
    lower = torch.full((gram.shape[0] - k,), math.nan, dtype=torch.float64)
    upper = lower.clone()
    lower[rows], upper[rows] = lo, hi
    return lower, upper


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
        [`Diagnosis`]: one [`NodeDiagnosis`] per node (same order; an undefined one says why in `undefined`) and one
        [`RolloutAlignment`] per rollout with a measured node.
    """
    config = config or DiagnosisConfig()
    names = list(teacher_losses)
    sequences = [torch.as_tensor(s).reshape(-1).long() for s in sequences]
    _check_nodes(sequences, nodes, teacher_losses)
    # A node without its own seed gets one from its index in this call: replicates of one node draw differently.
    nodes = [
        n if n.seed is not None else dataclasses.replace(n, seed=derive_seed(config.seed, i))
        for i, n in enumerate(nodes)
    ]
    if not nodes:
        return Diagnosis([], [])
    student = _student_logits(model, sequences, nodes)
    live = [i for i, z in enumerate(student) if bool(torch.isfinite(z).all())]
    # Nodes with a non-finite student, and teachers without finite logits at any other node, are left out of the
    # computation altogether: then they cannot move anyone else's numbers, not even by a rounding (the Gram's
    # reductions depend on how many vectors share a backward).
    reasons = [{n: nodes[i].teacher_signal(n, student[i].numel())[1] for n in names} for i in live]
    absent = [n for n in names if reasons and all(r[n] in ("no_signal", "non_finite_teacher") for r in reasons)]
    present = {n: teacher_losses[n] for n in names if n not in absent}
    inner = Diagnosis([], [])
    if live:
        inner = _diagnose(model, sequences, [nodes[i] for i in live], [student[i] for i in live], present, config)
        add_absent_teachers(inner, names, [{n: r[n] for n in absent} for r in reasons])
    measured = dict(zip(live, inner.nodes, strict=True))
    out = [
        measured.get(i)
        or unmeasured_node(n, n.sampled(sequences[n.sequence]), student[i].numel(), names, "non_finite_student")
        for i, n in enumerate(nodes)
    ]
    return Diagnosis(out, inner.rollouts)


def _diagnose(model, sequences, nodes, student, teacher_losses, config) -> Diagnosis:
    """[`diagnose_nodes`] on nodes whose student logits are finite."""
    names = list(teacher_losses)
    prepared = []
    for node, z in zip(nodes, student, strict=True):
        signal = {n: node.teacher_signal(n, z.numel()) for n in names}
        given = {n: v for n, (v, _) in signal.items() if isinstance(v, TrainerDirection)}
        teacher = {n: given[n].teacher_logits if n in given else v for n, (v, _) in signal.items()}
        why = {n: r for n, (_, r) in signal.items()}
        sampled = node.sampled(sequences[node.sequence])
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
        prep["seed"] = node.seed
        prep["p_k"], prep["success"] = p[candidates], node.success
        prep["directions"], prep["undefined"], prep["distance"] = {}, {}, {}
        for name, loss in teacher_losses.items():
            if name in given:  # the trainer's own loss over the rollout gave the direction (see `TrainerDirection`)
                if teacher[name] is not None:
                    prep["distance"][name] = loss.distance(z, teacher[name])
                prep["directions"][name] = given[name].direction
                if not bool(given[name].direction.any()):
                    prep["undefined"][name] = "zero_direction"
                continue
            if teacher[name] is None:
                prep["directions"][name] = torch.zeros_like(z)
                prep["undefined"][name] = why[name]
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

    # Adaptive allocation spends rollouts by the Gram, so it comes first there; otherwise after the rollouts, so
    # that a node stopped by screening needs none of its candidates' vectors (it is flat).
    adaptive = config.allocation == "adaptive"
    if adaptive:
        rollout_grams = _attach_grams(model, sequences, nodes, prepared, names, config)
    _targeted_rollouts(model, sequences, nodes, prepared, config)
    if not adaptive:
        rollout_grams = _attach_grams(model, sequences, nodes, prepared, names, config)
    for prep in prepared:
        success = prep["success"]
        empty = success.count == 0
        if bool(empty.any()) and bool((success.unscorable[empty] > 0).all()):
            # A candidate whose every continuation was unscorable has no estimate, and the ideal needs all of them.
            prep["unscorable"] = True
            prep["ideal"], prep["a_k"] = torch.zeros_like(prep["student"]), torch.zeros_like(prep["p_k"])
            for name in names:
                prep["undefined"].setdefault(name, "unscorable_continuations")
            continue
        prep["ideal"] = ideal_direction(prep["student"], prep["candidates"], success.mean, config.temperature)
        prep["a_k"] = ideal_on_candidates(prep["p_k"], success.mean)
        if float(prep["a_k"].abs().max()) == 0.0:
            for name in names:
                prep["undefined"].setdefault(name, "flat_success")
    results = [
        _assemble(nodes[i], prepared[i], names, teacher_losses, config, spent)
        for i, spent in enumerate(_spent(nodes, prepared))
    ]
    rollouts = rollout_cosines(model, sequences, nodes, prepared, names, config, rollout_grams)
    return Diagnosis(results, rollouts)


def _attach_grams(model, sequences, nodes, prepared, names, config):
    node_grams, rollout_grams = param_grams(model, sequences, nodes, prepared, names, config)
    for prep, gram in zip(prepared, node_grams, strict=True):
        prep["gram"] = gram
    return rollout_grams


def _spent(nodes, prepared):
    """Targeted continuations decoded per node (a reused observed outcome and known estimates cost nothing)."""
    for node, prep in zip(nodes, prepared, strict=True):
        yield 0 if node.success is not None else prep["success"].decoded - prep.get("reused", 0)


def _assemble(node, prep, names, teacher_losses, config, spent) -> NodeDiagnosis:
    cand, success, p, p_k, a_k = prep["candidates"], prep["success"], prep["p"], prep["p_k"], prep["a_k"]
    live = _with_direction(prep)
    stopped = bool(prep.get("screened_out"))
    logit = logit_gram(cand, [prep["directions"][names[t]] for t in live])
    grams = {"param": prep["gram"], "logit": embed_gram(logit, cand.numel(), live, len(names))}
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
        ideal_norm2={
            # A stopped node's term is that of the roulette's stopped branch: 0 (one sample has no variance anyway).
            space: math.nan
            if prep.get("unscorable")
            else 0.0
            if stopped
            else ideal_norm2(g, p_k, success.mean, variance, count)
            for space, g in grams.items()
        },
        rollouts_spent=spent,
        region_flat=region_has_flat(success, config.confidence) if bool((count > 0).all()) else True,
        pool_weight=prep.get("pool_weight", 1.0),
        screened_out=stopped,
    )
    cos, ci, proj = {}, {}, {}
    for space, g in grams.items():
        cos[space] = ideal_cosines(g, a_k[None])[0]
        proj[space] = teacher_projections(g, a_k)
        if prep.get("unscorable"):  # no ideal at all, unlike a flat one (whose projections are exactly 0)
            proj[space] = torch.full_like(proj[space], math.nan)
        if stopped:
            # Stopped after an all-alike screen: its pooled terms are exactly those of a flat node (the roulette's
            # stopped branch), whatever its few rollouts would say about variances (one sample has none), and its
            # candidates have no parameter-space vectors (NaN in the Gram): no parameter-space interval.
            cos[space] = torch.full_like(cos[space], math.nan)
            k = cand.numel()
            has_vector = g.to(torch.float64)[k:, k:].diagonal() > 0  # as `teacher_projections` decides: NaN if not
            proj[space] = torch.where(has_vector, 0.0, math.nan)
        if stopped and space == "param":
            nan = torch.full((len(names),), float("nan"), dtype=torch.float64)
            ci[space] = (nan, nan)
        elif config.num_bootstrap > 0 and bool((count > 0).all()):
            ci[space] = _intervals(
                g,
                prep,
                config.confidence,
                num_points=config.num_bootstrap,
                generator=stream(prep["seed"], "intervals", space),
            )
        else:
            nan = torch.full((len(names),), float("nan"), dtype=torch.float64)
            ci[space] = (nan, nan)
    log_p = torch.log_softmax(prep["student"].double() / config.temperature, dim=-1)  # for the cheap statistics
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
            # Unmeasured at a node stopped by screening: the finished ones, weighted, stand for it in means.
            advantage=math.nan if q is None or stopped else float(teacher_advantage(p, q, cand, success.mean)),
            direction_norm=float(b.norm()),
            param_proj=float(proj["param"][t]),
            logit_proj=float(proj["logit"][t]),
            distance=prep["distance"].get(name, float("nan")),
            proxies=cheap_statistics(prep["student"], t_logits, config.temperature, student_log_probs=log_p),
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
