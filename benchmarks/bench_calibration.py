"""Calibration of the estimator against exact success probabilities: interval coverage, bias, adaptive allocation.

    python -m benchmarks.bench_calibration [--quick] [--threads 1]

Tiny causal LMs (Qwen2 / Llama configs, vocabulary 6-8, plain and LoRA) on toy tasks whose success probability
`S_k` of every candidate at a node is computable by enumerating every continuation (2-3 new tokens). Candidates are
the whole vocabulary, so the exact ideal holds no neutral-token assumption and every estimate differs from the exact
one by rollout noise alone. Teachers at every node: random logits and "oracle-ish" ones (`oracle_teacher_logits`
built on the exact `S` with a random `beta` in [-4, 4] plus logit noise, so exact cosines spread over [-1, 1]),
each under two of: reverse KL, forward KL, JSD beta 0.5, student top-k (with and without tail), at temperature 1 and
0.7 (sampling and loss). In two settings (no EOS, "repeat" task) the candidates' success rates lie close together
(0.05-0.35), the regime where single-node cosines are most attenuated.

Measured side by side in one run:
a. per-node coverage and width of the nominal 95% interval of `param_cos` and `logit_cos` (profile likelihood,
   `method/intervals.py`): with simulated Bernoulli scores drawn from the exact `S` (n=8 per candidate, passed as
   `success=` to `diagnose_nodes`), with real targeted rollouts through the model (must agree), and the previous
   estimator's percentile bootstrap of the plain cosine on the same draws; then (a') the same likelihood region
   searched more thoroughly, paired on the same draws (what the default search misses);
b. bias against exact values: the plain mean of node cosines (attenuated toward 0) and `pooled_alignment`
   (noise-debiased) against the exact pooled `rho_T` of METHOD.md, and the coverage of the pooled interval over
   repeated pools;
c. adaptive against uniform allocation with real targeted rollouts: rollouts spent (`rollouts_spent`) for the same
   median interval width, and the coverage of the adaptive intervals (sequential stopping).
Thread count defaults to 1: the interval search is many tiny tensor operations, which oversubscribed threads slow
down badly on a shared machine.
"""

import argparse
import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from benchmarks.common import exact_success_all, lora, tiny_model
from gad_callbacks import (
    DiagnosisConfig,
    Node,
    SuccessEstimate,
    TeacherLoss,
    diagnose_nodes,
    oracle_teacher_logits,
    pooled_alignment,
    pooled_ratio,
)
from gad_callbacks.method.alignment import (
    ideal_cosines,
    ideal_norm2,
    ideal_on_candidates,
    logit_gram,
    teacher_projections,
)
from gad_callbacks.method.intervals import cosine_intervals


EOS = 1
SPACES = ("param", "logit")
THOROUGH = dict(num_points=3000, rounds=8)  # a much denser search of the same likelihood region


# -- toy tasks: deterministic verifiers of the continuation (forced candidate first) ----------------------------------
def parity3(seq):
    """Success when the non-EOS tokens sum to a multiple of 3."""
    return float(sum(t for t in seq if t != EOS) % 3 == 0)


def repeat_first(seq):
    """Success when the token after the forced candidate repeats it."""
    return float(len(seq) > 1 and seq[1] == seq[0])


def has_small(seq):
    """Success when a token 2 or 3 appears before EOS (the forced candidate included)."""
    for t in seq:
        if t == EOS:
            return 0.0
        if t in (2, 3):
            return 1.0
    return 0.0


@dataclass
class Setting:
    name: str
    kind: str
    vocab: int
    seed: int
    logit_scale: float
    temperature: float
    new_tokens: int
    losses: dict
    target: object
    use_lora: bool = False
    eos: int | None = EOS  # None: continuations never stop early (success rates of candidates close together)
    num_nodes: int = 4


def settings(t=0.7):
    """The toy worlds: models x losses x temperatures x tasks (`t`: the temperature other than 1)."""
    return [
        Setting(
            name="qwen2 V8 tau=1 parity3",
            kind="qwen2",
            vocab=8,
            seed=0,
            logit_scale=3.0,
            temperature=1.0,
            new_tokens=3,
            target=parity3,
            losses={"rkl": TeacherLoss(), "fkl": TeacherLoss("forward_kl")},
        ),
        Setting(
            name=f"llama V7 tau={t} parity3",
            kind="llama",
            vocab=7,
            seed=1,
            logit_scale=2.0,
            temperature=t,
            new_tokens=3,
            target=parity3,
            losses={"jsd": TeacherLoss("jsd", beta=0.5, temperature=t), "top3": TeacherLoss(top_k=3, temperature=t)},
        ),
        Setting(
            name="qwen2+LoRA V6 tau=1 has_small",
            kind="qwen2",
            vocab=6,
            seed=2,
            logit_scale=4.0,
            temperature=1.0,
            new_tokens=3,
            target=has_small,
            losses={"rkl": TeacherLoss(), "fkl-top4": TeacherLoss("forward_kl", top_k=4, add_tail=True)},
            use_lora=True,
        ),
        Setting(
            name=f"llama V8 tau={t} repeat noEOS",
            kind="llama",
            vocab=8,
            seed=3,
            logit_scale=3.0,
            temperature=t,
            new_tokens=2,
            target=repeat_first,
            losses={"rkl": TeacherLoss(temperature=t), "jsd": TeacherLoss("jsd", beta=0.5, temperature=t)},
            eos=None,
        ),
        Setting(
            name="qwen2+LoRA V6 tau=1 repeat noEOS",
            kind="qwen2",
            vocab=6,
            seed=4,
            logit_scale=4.0,
            temperature=1.0,
            new_tokens=3,
            target=repeat_first,
            losses={"rkl": TeacherLoss(), "jsd-top3": TeacherLoss("jsd", beta=0.5, top_k=3)},
            use_lora=True,
            eos=None,
        ),
    ]


@dataclass
class World:
    """One setting built: the model, one sequence per node, each node's teachers and exact values."""

    setting: Setting
    model: torch.nn.Module
    sequences: list
    teachers: list  # per node: {name: logits}
    exact_s: list  # per node: exact S by token id, [V]
    losses: dict
    exact: dict = field(default_factory=dict)  # (node, teacher, space) -> (cos, proj); (node, space) -> ||g||^2
    grams: list = field(default_factory=list)  # per node: {"param", "logit": Gram, "p_k": [V]} (candidates = arange)

    @property
    def names(self):
        return list(self.losses)

    def config(self, **kw):
        s = self.setting
        base = dict(
            temperature=s.temperature,
            mass=1.0,
            max_candidates=s.vocab,
            teacher_top=0,
            max_new_tokens=s.new_tokens,
            eos_token_id=[] if s.eos is None else [s.eos],
        )
        base.update(kw)
        return DiagnosisConfig(**base)

    def score(self, continuations):
        return [self.setting.target(c) for c in continuations]


def known(success, columns):
    """Success estimate on candidates `arange(V)` holding `S` in `columns` identical columns (zero variance)."""
    s = torch.as_tensor(success, dtype=torch.float64)
    return SuccessEstimate(
        torch.arange(s.numel()), s[:, None].repeat(1, columns), torch.zeros(s.numel(), dtype=torch.long)
    )


def build_world(s: Setting) -> World:
    model = tiny_model(s.kind, vocab_size=s.vocab, seed=s.seed, logit_scale=s.logit_scale, eos_token_id=s.eos)
    if s.use_lora:
        model = lora(model, seed=s.seed)
    g = torch.Generator().manual_seed(100 + s.seed)
    losses = {}
    for name, loss in s.losses.items():
        losses[f"rand/{name}"] = loss
        losses[f"orc/{name}"] = loss
    sequences, teachers, exact_s = [], [], []
    while len(sequences) < s.num_nodes:
        seq = torch.randint(2, s.vocab, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g)
        exact = torch.tensor(
            exact_success_all(model, seq.tolist(), list(range(s.vocab)), s.new_tokens, s.temperature, s.target, s.eos),
            dtype=torch.float64,
        ).clamp(0.0, 1.0)
        if float(exact.max() - exact.min()) < 0.01:  # the ideal would be (almost) zero: skip such a node
            continue
        with torch.no_grad():
            z = model(input_ids=seq[None]).logits[0, -1].double()
        t = {}
        for name in s.losses:
            t[f"rand/{name}"] = torch.randn(s.vocab, generator=g, dtype=torch.float64) * 2.0
            beta = float(torch.empty(1, dtype=torch.float64).uniform_(-4.0, 4.0, generator=g))
            orc = oracle_teacher_logits(z, torch.arange(s.vocab), exact, beta=beta, temperature=s.temperature)
            t[f"orc/{name}"] = orc + 0.5 * torch.randn(s.vocab, generator=g, dtype=torch.float64)
        sequences.append(seq)
        teachers.append(t)
        exact_s.append(exact)
    w = World(s, model, sequences, teachers, exact_s, losses)
    # Exact values: S given as two identical columns (zero sample variance, so `ideal_norm2` is the exact ||g||^2).
    nodes = [Node(i, seq.numel(), teachers[i], success=known(exact_s[i], 2)) for i, seq in enumerate(sequences)]
    for i, nd in enumerate(diagnose_nodes(model, sequences, nodes, losses, w.config(num_bootstrap=0)).nodes):
        for space in SPACES:
            w.exact[(i, space)] = nd.ideal_norm2[space]
            for name in w.names:
                ta = nd.teachers[name]
                w.exact[(i, name, space)] = (getattr(ta, f"{space}_cos"), getattr(ta, f"{space}_proj"))
        directions = [nd.directions[n] for n in w.names]
        w.grams.append(
            {"param": nd.gram, "logit": logit_gram(nd.candidates, directions), "p_k": nd.student_probs.double()}
        )
    return w


def draw(w: World, i: int, n: int, g: torch.Generator) -> SuccessEstimate:
    """Simulated targeted rollouts of node `i`: `n` Bernoulli(S_k) scores per candidate."""
    s = w.exact_s[i]
    scores = torch.bernoulli(s[:, None].expand(s.numel(), n), generator=g)
    return SuccessEstimate(torch.arange(s.numel()), scores, torch.zeros(s.numel(), dtype=torch.long))


def diagnose_simulated(w: World, reps: int, n: int, g: torch.Generator, intervals=True, seed0=0):
    """
    `reps` independent simulated diagnoses of every node through `diagnose_nodes`: list of (node index, diagnosis).
    With intervals, each replication is its own call with its own seed (the interval search draws its rays from the
    seed: replications must not share them); without, many replications go in one call.
    """
    out = []
    per_call = 1 if intervals else 16
    for start in range(0, reps, per_call):
        part = [i for _ in range(min(per_call, reps - start)) for i in range(len(w.sequences))]
        nodes = [Node(i, w.sequences[i].numel(), w.teachers[i], success=draw(w, i, n, g)) for i in part]
        cfg = w.config(num_bootstrap=200 if intervals else 0, seed=seed0 + start)
        out += list(zip(part, diagnose_nodes(w.model, w.sequences, nodes, w.losses, cfg).nodes))
    return out


def diagnose_real(w: World, reps: int, seed0: int = 0, **cfg):
    """`reps` independent diagnoses of every node with real targeted rollouts through the model."""
    out = []
    for r in range(reps):
        nodes = [
            Node(i, seq.numel(), w.teachers[i], score=w.score, max_new_tokens=w.setting.new_tokens)
            for i, seq in enumerate(w.sequences)
        ]
        for i, nd in enumerate(
            diagnose_nodes(w.model, w.sequences, nodes, w.losses, w.config(seed=seed0 + r, **cfg)).nodes
        ):
            assert nd.candidates.numel() == w.setting.vocab
            out.append((i, nd))
    return out


# -- (a) coverage bookkeeping ----------------------------------------------------------------------------------------
@dataclass
class Coverage:
    """Coverage of exact values by intervals; clusters (one per node diagnosis) give the standard error."""

    clusters: list = field(default_factory=list)  # per diagnosis: (covered, total)
    widths: list = field(default_factory=list)
    no_interval: int = 0

    def add(self, pairs):
        """`pairs`: [(exact, (lo, hi))] of one node diagnosis (its teachers share one draw: one cluster)."""
        cov = tot = 0
        for exact, (lo, hi) in pairs:
            if math.isnan(exact):
                continue
            tot += 1
            if math.isnan(lo) or math.isnan(hi):
                self.no_interval += 1
                self.widths.append(2.0)
                continue
            cov += int(lo - 1e-9 <= exact <= hi + 1e-9)
            self.widths.append(hi - lo)
        self.clusters.append((cov, tot))

    def merge(self, other):
        self.clusters += other.clusters
        self.widths += other.widths
        self.no_interval += other.no_interval

    @property
    def total(self):
        return sum(t for _, t in self.clusters)

    @property
    def rate(self):
        return sum(c for c, _ in self.clusters) / max(self.total, 1)

    @property
    def se(self):
        m = len(self.clusters)
        if m < 2:
            return float("nan")
        r, mean_t = self.rate, self.total / m
        return math.sqrt(sum((c - r * t) ** 2 for c, t in self.clusters) / (m * (m - 1))) / mean_t

    @property
    def trivial(self):
        return sum(w > 1.9 for w in self.widths) / max(len(self.widths), 1)

    def cells(self):
        if not self.widths:
            return f"{'-':>14}{'-':>7}{'-':>7}"
        return f"{self.rate:>8.3f}±{self.se:.3f}{statistics.mean(self.widths):>7.2f}{self.trivial:>7.2f}"


def pairs_of(w: World, i: int, nd, space: str, ci=None):
    """(exact, interval) per teacher at one diagnosed node; `ci` overrides the node's own intervals `{name: (lo, hi)}`."""
    return [
        (w.exact[(i, name, space)][0], ci[name] if ci is not None else getattr(nd.teachers[name], f"{space}_ci"))
        for name in w.names
    ]


BUCKETS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.01))


def add_bucketed(buckets, method, pairs):
    """Add one diagnosis's (exact, interval) pairs to coverage counters by |exact cosine|."""
    for lo, hi in BUCKETS:
        part = [(e, ci) for e, ci in pairs if lo <= abs(e) < hi]
        if part:
            buckets.setdefault((method, lo), Coverage()).add(part)


def candidate_grams(w: World, i: int, nd, space: str):
    """The node's Gram and p_k in the order of `nd.candidates` (simulated diagnoses use arange: the stored ones)."""
    order = nd.candidates
    k = order.numel()
    gram = w.grams[i][space]
    perm = torch.cat([order, torch.arange(k, gram.shape[0])])
    return gram[perm[:, None], perm[None, :]], w.grams[i]["p_k"][order]


WHAT_IF = {  # a denser search of the same likelihood region, on the same draws (what the default search misses)
    "thorough": dict(confidence=0.95, **THOROUGH),
}


def other_intervals(w: World, i: int, nd, space: str, g: torch.Generator, what_if: bool):
    """
    Intervals of the same draw by the previous estimator (percentile bootstrap of the plain cosine) and, with
    `what_if`, by other searches or cutoffs of the profile-likelihood region.
    """
    gram, p_k = candidate_grams(w, i, nd, space)
    reps = ideal_cosines(gram, ideal_on_candidates(p_k, nd.success.resample_means(200, g)))
    lo, hi = torch.nanquantile(reps, 0.025, dim=0), torch.nanquantile(reps, 0.975, dim=0)
    out = {"bootstrap": {name: (float(lo[t]), float(hi[t])) for t, name in enumerate(w.names)}}
    if what_if:
        for label, kw in WHAT_IF.items():
            kw = dict(kw)
            lo, hi = cosine_intervals(gram, p_k, nd.success, kw.pop("confidence"), generator=g, **kw)
            out[label] = {name: (float(lo[t]), float(hi[t])) for t, name in enumerate(w.names)}
    return out


# -- (b) pooling -------------------------------------------------------------------------------------------------------
def exact_pooled(w: World, name, space, node_ids):
    """rho_T over the multiset of nodes `node_ids` from exact per-node terms (METHOD.md)."""
    proj = sum(w.exact[(i, name, space)][1] for i in node_ids)
    norm2 = sum(w.exact[(i, space)] for i in node_ids)
    return proj / math.sqrt(len(node_ids) * norm2)


def fast_terms(w: World, i: int, est: SuccessEstimate, space: str):
    """Per-node pooling terms from the node's stored Gram, by the functions `diagnose_nodes` uses (checked against it)."""
    gram, p_k = w.grams[i][space], w.grams[i]["p_k"]
    proj = teacher_projections(gram, ideal_on_candidates(p_k, est.mean))
    return proj, ideal_norm2(gram, p_k, est.mean, est.variance(), est.count)


# -- (c) allocation ----------------------------------------------------------------------------------------------------
def interpolate_rollouts(curve, width):
    """Rollouts uniform allocation needs for median `width`: log-log interpolation of `curve` [(rollouts, width)].
    Returns (rollouts, extrapolated)."""
    pts = sorted(curve)  # increasing rollouts
    for (r0, w0), (r1, w1) in zip(pts, pts[1:]):
        if min(w0, w1) <= width <= max(w0, w1) and w0 != w1:
            f = (math.log(w0) - math.log(width)) / (math.log(w0) - math.log(w1))
            return math.exp(math.log(r0) + f * (math.log(r1) - math.log(r0))), False
    # Outside the measured range: extend the line through the two nearest points.
    (r0, w0), (r1, w1) = (pts[-2], pts[-1]) if width < pts[-1][1] else (pts[0], pts[1])
    if w0 == w1:
        return float("nan"), True
    slope = (math.log(r1) - math.log(r0)) / (math.log(w1) - math.log(w0))
    return math.exp(math.log(r0) + slope * (math.log(width) - math.log(w0))), True


def allocation_run(worlds, reps, seed0, **cfg):
    """Real-rollout diagnoses of every node of every world: rollouts per node, param widths, coverage, per world."""
    out = {}
    for w in worlds:
        diags = diagnose_real(w, reps, seed0=seed0, **cfg)
        cov = Coverage()
        for i, nd in diags:
            cov.add(pairs_of(w, i, nd, "param"))
        out[w.setting.name] = ([nd.rollouts_spent for _, nd in diags], cov)
    return out


def summarize_run(run, names=None):
    """Mean rollouts per node, median and mean interval width, coverage, over the worlds named (all by default)."""
    spent, cov = [], Coverage()
    for name, (s, c) in run.items():
        if names is None or name in names:
            spent += s
            cov.merge(c)
    return statistics.mean(spent), statistics.median(cov.widths), statistics.mean(cov.widths), cov


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer replications (~1-2 minutes)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    q = args.quick
    reps_sim = 10 if q else 40  # simulated diagnoses per node with intervals (a)
    reps_what_if = 3 if q else 10  # of which: also searched / cut differently (a')
    reps_real = 4 if q else 20  # real-rollout diagnoses per node (a)
    reps_pool = 50 if q else 250  # simulated diagnoses per node for the pooled estimates (b)
    pool_repeats = 10 if q else 60  # independent pools of 4 nodes x 50 diagnoses, for the pooled interval (b)
    reps_alloc = 2 if q else 6  # real-rollout diagnoses per node and allocation setting (c)
    # Separate streams: the scores drawn (g) do not depend on how many random numbers the interval searches and
    # bootstraps (g_aux) consume.
    g = torch.Generator().manual_seed(args.seed)
    g_aux = torch.Generator().manual_seed(args.seed + 10**6)
    start = time.perf_counter()

    worlds = [build_world(s) for s in settings()]
    print(
        f"{len(worlds)} settings x {worlds[0].setting.num_nodes} nodes x 4 teachers, built in "
        f"{time.perf_counter() - start:.1f} s (threads={args.threads})"
    )
    for w in worlds:
        spread = ", ".join(f"{float(s.min()):.2f}-{float(s.max()):.2f}" for s in w.exact_s)
        cos = [w.exact[(i, n, "param")][0] for i in range(len(w.sequences)) for n in w.names]
        print(f"  {w.setting.name:<34} S per node: {spread}; exact param cos {min(cos):+.2f}..{max(cos):+.2f}")

    # (a) per-node coverage ------------------------------------------------------------------------------------------
    print(
        "\n(a) per-node nominal 95% intervals, n=8 rollouts per candidate: coverage of the exact cosine ± its standard "
        "error (clusters = node diagnoses), mean width, share of widths > 1.9"
    )
    methods = ("sim", "real", "bootstrap")
    head = "".join(f"{m:>28}" for m in methods)
    print(f"{'setting':<34}{'space':>6}{head}")
    totals = {(m, sp): Coverage() for m in methods for sp in SPACES}
    buckets, paired = {}, {}
    what_if = ("default",) + tuple(WHAT_IF)
    t_sim = t_real = 0.0
    for w in worlds:
        t0 = time.perf_counter()
        sim = diagnose_simulated(w, reps_sim, 8, g, seed0=100 * args.seed)
        t_sim += time.perf_counter() - t0
        t0 = time.perf_counter()
        real = diagnose_real(w, reps_real, seed0=1000 + 100 * args.seed, allocation="uniform", num_rollouts=8)
        t_real += time.perf_counter() - t0
        for space in SPACES:
            cov = {m: Coverage() for m in methods}
            for r, (i, nd) in enumerate(sim):
                own = pairs_of(w, i, nd, space)
                cov["sim"].add(own)
                add_bucketed(buckets, "sim", own)
                extra = other_intervals(w, i, nd, space, g_aux, r < reps_what_if * len(w.sequences))
                cov["bootstrap"].add(pairs_of(w, i, nd, space, extra.pop("bootstrap")))
                if extra:
                    paired.setdefault(("default", space), Coverage()).add(own)
                    add_bucketed(paired, "default", own)
                    for m, ci in extra.items():
                        paired.setdefault((m, space), Coverage()).add(pairs_of(w, i, nd, space, ci))
                        add_bucketed(paired, m, pairs_of(w, i, nd, space, ci))
            for i, nd in real:
                cov["real"].add(pairs_of(w, i, nd, space))
                add_bucketed(buckets, "real", pairs_of(w, i, nd, space))
            for m in methods:
                totals[(m, space)].merge(cov[m])
            print(f"{w.setting.name:<34}{space:>6}" + "".join(f"{cov[m].cells():>28}" for m in methods))
    for space in SPACES:
        print(
            f"{'ALL (' + str(totals[('sim', space)].total) + ' sim pairs)':<34}{space:>6}"
            + "".join(f"{totals[(m, space)].cells():>28}" for m in methods)
        )
    for lo, hi in BUCKETS:
        label = f"ALL, {lo:.1f} <= |exact| < {min(hi, 1.0):.1f}"
        print(
            f"{label:<34}{'both':>6}"
            + "".join(f"{buckets[(m, lo)].cells() if (m, lo) in buckets else '-':>28}" for m in ("sim", "real"))
        )
    print(
        f"(sim: {t_sim:.0f} s; real: {t_real:.0f} s; sim = simulated scores through diagnose_nodes, real = targeted "
        f"rollouts through the model, bootstrap = the previous estimator on the sim draws)"
    )
    print(
        f"\n(a') the same likelihood region searched or cut differently, paired on the first {reps_what_if} sim draws "
        f"of every node (default: the interval diagnose_nodes returns, num_points=200 and the library's default "
        f"rounds; thorough: num_points={THOROUGH['num_points']}, rounds={THOROUGH['rounds']}; both with the library's "
        f"cutoff chi2_1(0.95) x (1 + 3.3 / n))"
    )
    print(f"{'':<34}{'space':>6}" + "".join(f"{m:>28}" for m in what_if))
    for space in SPACES:
        print(f"{'ALL':<34}{space:>6}" + "".join(f"{paired[(m, space)].cells():>28}" for m in what_if))
    for lo, hi in BUCKETS:
        label = f"ALL, {lo:.1f} <= |exact| < {min(hi, 1.0):.1f}"
        print(
            f"{label:<34}{'both':>6}"
            + "".join(f"{paired[(m, lo)].cells() if (m, lo) in paired else '-':>28}" for m in what_if)
        )

    # (b) bias and pooling ---------------------------------------------------------------------------------------------
    print(
        f"\n(b) bias against exact values: {reps_pool} simulated diagnoses (n=8) of each node, pooled over the "
        f"setting's nodes (N = {reps_pool * worlds[0].setting.num_nodes} per row)"
    )
    print(
        f"{'setting / teacher':<44}{'space':>6}{'exact rho':>10}{'pooled':>9}{'pooled 95% CI':>18}"
        f"{'exact mean':>11}{'node mean':>10}"
    )
    err_pool, err_mean, inside, slopes = [], [], [], {"node mean": [], "pooled per node": []}
    for w in worlds:
        diags = diagnose_simulated(w, reps_pool, 8, g, intervals=False)
        ids = [i for i, _ in diags]
        nodes = [nd for _, nd in diags]
        for name in w.names:
            for space in SPACES:
                rho = exact_pooled(w, name, space, ids)
                pooled = pooled_alignment(nodes, name, space=space, generator=g_aux)
                est = [getattr(nd.teachers[name], f"{space}_cos") for nd in nodes]
                mean = statistics.mean(c for c in est if not math.isnan(c))
                exact_mean = statistics.mean(w.exact[(i, name, space)][0] for i in ids)
                err_pool.append(pooled.mean - rho)
                err_mean.append(mean - exact_mean)
                inside.append(pooled.lower <= rho <= pooled.upper)
                print(
                    f"{w.setting.name[:26] + ' ' + name:<44}{space:>6}{rho:>+10.3f}{pooled.mean:>+9.3f}"
                    f"{f'[{pooled.lower:+.3f}, {pooled.upper:+.3f}]':>18}{exact_mean:>+11.3f}{mean:>+10.3f}"
                )
                # Per node: the mean of its cosines and its pooled alignment over its own diagnoses, against exact.
                for i in range(len(w.sequences)):
                    mine = [nd for j, nd in diags if j == i]
                    c = [getattr(nd.teachers[name], f"{space}_cos") for nd in mine]
                    exact = w.exact[(i, name, space)][0]
                    slopes["node mean"].append((exact, statistics.mean(x for x in c if not math.isnan(x))))
                    slopes["pooled per node"].append((exact, pooled_alignment(mine, name, space=space).mean))
    print(
        f"pooled - exact rho over {len(err_pool)} pools: mean {statistics.mean(err_pool):+.3f}, "
        f"max |.| {max(map(abs, err_pool)):.3f}; exact inside the pooled 95% interval in "
        f"{sum(inside)}/{len(inside)}"
    )
    print(f"node mean - exact mean: mean {statistics.mean(err_mean):+.3f}, max |.| {max(map(abs, err_mean)):.3f}")
    for label, pts in slopes.items():
        x, y = torch.tensor([p[0] for p in pts]), torch.tensor([p[1] for p in pts])
        ok = ~(torch.isnan(x) | torch.isnan(y))
        x, y = x[ok], y[ok]
        slope = float((x * y).sum() / (x * x).sum())
        print(
            f"per (node, teacher, space), {reps_pool} diagnoses each: {label:<15} vs exact: slope through 0 "
            f"{slope:.3f}, mean |diff| {float((y - x).abs().mean()):.3f}, max |diff| {float((y - x).abs().max()):.3f}"
            f" ({int((~ok).sum())} undefined)"
        )

    # (b') coverage of the pooled interval over repeated pools (fast path, checked against diagnose_nodes) ------------
    per_pool = 50
    print(
        f"\n(b') pooled 95% interval over {pool_repeats} independent pools per (setting, teacher, space), each of "
        f"{per_pool} simulated diagnoses x 4 nodes"
    )
    # The fast path computes the pooling terms with the same functions diagnose_nodes uses; check it on real output.
    w = worlds[0]
    check = diagnose_simulated(w, 1, 8, torch.Generator().manual_seed(7), intervals=False)
    for i, nd in check:
        for space in SPACES:
            proj, norm2 = fast_terms(w, i, nd.success, space)
            want = torch.tensor([getattr(nd.teachers[n], f"{space}_proj") for n in w.names], dtype=torch.float64)
            assert torch.allclose(proj, want, atol=1e-9, rtol=1e-6), (proj, want)
            assert math.isclose(norm2, nd.ideal_norm2[space], rel_tol=1e-6, abs_tol=1e-12)
    pooled_cov = {}
    t0 = time.perf_counter()
    for w in worlds:
        ids = [i for _ in range(per_pool) for i in range(len(w.sequences))]
        cov = pooled_cov[w.setting.name] = {"covered": 0, "total": 0, "no_interval": 0, "widths": [], "errors": []}
        for _ in range(pool_repeats):
            terms = {sp: [fast_terms(w, i, draw(w, i, 8, g), sp) for i in ids] for sp in SPACES}
            for space in SPACES:
                proj = torch.stack([t[0] for t in terms[space]])
                norm2 = [t[1] for t in terms[space]]
                for t, name in enumerate(w.names):
                    summary = pooled_ratio(proj[:, t], norm2, num_bootstrap=400, generator=g_aux)
                    rho = exact_pooled(w, name, space, ids)
                    cov["total"] += 1
                    cov["errors"].append(summary.mean - rho)
                    if not summary.has_interval:
                        cov["no_interval"] += 1
                        continue
                    cov["covered"] += int(summary.lower <= rho <= summary.upper)
                    cov["widths"].append(summary.upper - summary.lower)
    print(f"{'setting':<34}{'coverage':>10}{'no CI':>7}{'of defined':>11}{'mean w':>8}{'mean err':>10}{'sd err':>8}")
    for name, cov in pooled_cov.items():
        width = statistics.mean(cov["widths"]) if cov["widths"] else float("nan")
        errors = [e for e in cov["errors"] if not math.isnan(e)]
        defined = cov["total"] - cov["no_interval"]
        print(
            f"{name:<34}{cov['covered'] / cov['total']:>10.3f}{cov['no_interval']:>7}"
            f"{cov['covered'] / max(defined, 1):>11.3f}{width:>8.3f}"
            f"{statistics.mean(errors):>+10.3f}{statistics.stdev(errors):>8.3f}"
        )
    covered = sum(c["covered"] for c in pooled_cov.values())
    total = sum(c["total"] for c in pooled_cov.values())
    print(f"ALL: coverage {covered / total:.3f} over {total} pooled intervals ({time.perf_counter() - t0:.0f} s)")

    # (c) adaptive vs uniform ------------------------------------------------------------------------------------------
    print(
        f"\n(c) allocation with real targeted rollouts ({reps_alloc} diagnoses of each node per row): rollouts per "
        f"node against the median width of the parameter-space 95% intervals"
    )
    uniform_ns = (4, 8, 16, 32, 64)
    adaptive = [(8, 0.5), (16, 0.5), (32, 0.5), (32, 0.3), (64, 0.3)]
    t0 = time.perf_counter()
    runs = {}
    for n in uniform_ns:
        runs[("uniform", n, None)] = allocation_run(worlds, reps_alloc, 5000, allocation="uniform", num_rollouts=n)
    for n, tw in adaptive:
        runs[("adaptive", n, tw)] = allocation_run(
            worlds, reps_alloc, 5000, allocation="adaptive", num_rollouts=n, target_width=tw
        )
    groups = {"ALL": None}
    groups.update({w.setting.name: [w.setting.name] for w in worlds})
    print(
        f"{'allocation':<24}{'rollouts/node':>14}{'median w':>9}{'mean w':>8}{'coverage':>15}"
        f"{'uniform needs (median w)':>26}{'ratio':>7}{'(mean w)':>10}{'ratio':>7}"
    )
    ratios = {}
    for group, names in groups.items():
        if group != "ALL" and q:
            continue
        print(f"-- {group}")
        curve_med, curve_mean = [], []
        for key, run in runs.items():
            spent, med, mean, cov = summarize_run(run, names)
            label = f"{key[0]} n={key[1]}" + ("" if key[2] is None else f" tw={key[2]}")
            row = f"{label:<24}{spent:>14.1f}{med:>9.3f}{mean:>8.3f}{cov.rate:>9.3f}±{cov.se:.3f}"
            if key[0] == "uniform":
                curve_med.append((spent, med))
                curve_mean.append((spent, mean))
                print(row)
            else:
                need_med, extra_med = interpolate_rollouts(curve_med, med)
                need_mean, extra_mean = interpolate_rollouts(curve_mean, mean)
                ratios.setdefault(group, []).append((label, spent / need_med, spent / need_mean, cov.rate))
                print(
                    f"{row}{need_med:>25.1f}{'*' if extra_med else ' '}{spent / need_med:>7.2f}"
                    f"{need_mean:>9.1f}{'*' if extra_mean else ' '}{spent / need_mean:>7.2f}"
                )
    print(f"(* extrapolated beyond the uniform runs; {time.perf_counter() - t0:.0f} s)")

    # summary -----------------------------------------------------------------------------------------------------------
    print("\nsummary (targets in brackets)")
    for space in SPACES:
        for m in methods:
            c = totals[(m, space)]
            print(
                f"  per-node coverage {space:<5} {m:<13}: {c.rate:.3f} ± {c.se:.3f}, mean width "
                f"{statistics.mean(c.widths):.2f}, widths > 1.9: {c.trivial:.1%}  [>= 0.90, width well below 2]"
            )
            if c.no_interval:  # nodes stopped by screening have no parameter-space interval: counted as misses above
                hits = sum(k for k, _ in c.clusters)
                print(
                    f"  {'':<18}{'':<5} {'':<13}  {c.no_interval} of {c.total} without an interval (counted as "
                    f"misses); among those with one: {hits / max(c.total - c.no_interval, 1):.3f}"
                )
        for m in WHAT_IF:
            c = paired[(m, space)]
            print(
                f"  per-node coverage {space:<5} {m:<13}: {c.rate:.3f} ± {c.se:.3f}, mean width "
                f"{statistics.mean(c.widths):.2f} (default on the same draws: {paired[('default', space)].rate:.3f},"
                f" {statistics.mean(paired[('default', space)].widths):.2f})"
            )
    within = sum(abs(e) <= 0.03 for e in err_pool)
    print(
        f"  |pooled - exact rho|: mean {statistics.mean(map(abs, err_pool)):.3f}, max {max(map(abs, err_pool)):.3f},"
        f" within 0.03 in {within}/{len(err_pool)}, exact inside the pooled interval in {sum(inside)}/{len(inside)}"
        "  [<= 0.03, or exact inside the interval]"
    )
    print(f"  pooled interval coverage: {covered / total:.3f}  [~0.95]")
    for col, label in ((1, "median"), (2, "mean")):
        listed = ", ".join(f"{r[0]}: {r[col]:.2f}" for r in ratios["ALL"])
        best = min(r[col] for r in ratios["ALL"])
        print(f"  adaptive / uniform rollouts at equal {label} width: {listed}; best {best:.2f}  [<= 0.5]")
    print(f"  adaptive coverage: {', '.join(f'{r[0]}: {r[3]:.3f}' for r in ratios['ALL'])}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
