"""One non-finite value spoils only what it touches (issue #9): a NaN teacher, a NaN student, a NaN or None reward."""

import dataclasses
import logging
import math
from dataclasses import dataclass

import pytest
import torch

from gad_callbacks import (
    DiagnosisConfig,
    Node,
    PassSettings,
    Rollout,
    TeacherLoss,
    TeacherSource,
    diagnose_nodes,
    diagnose_rollouts,
)
from gad_callbacks.engine.rollouts import estimate_success
from tests.conftest import tiny_model


NAN = float("nan")
CONFIG = DiagnosisConfig(num_rollouts=3, max_new_tokens=3, max_candidates=3, num_bootstrap=8, seed=1)
LOG = "gad_callbacks.diagnosis.rollout_pass"


class _Tokenizer:
    eos_token_id = 1

    def decode(self, ids, skip_special_tokens=False):
        return " ".join(str(int(i)) for i in ids)


def _parity(ids) -> float:
    # Every token can flip it, so success varies across candidates and cosines are defined.
    return float(sum(t < 24 for t in ids) % 2 == 0)


def _reward(prompts, completions, completion_ids=None, **columns):
    return [_parity(ids) for ids in completion_ids]


class _EveryTenth:
    """A reward that is None (then NaN, alternately) for every 10th completion it scores, counting what it gave."""

    def __init__(self):
        self.calls, self.unscorable = 0, 0

    def __call__(self, prompts, completions, completion_ids=None, **columns):
        out = []
        for ids in completion_ids:
            self.calls += 1
            bad = self.calls % 10 == 0
            self.unscorable += bad
            out.append((None if self.calls % 20 else NAN) if bad else _parity(ids))
        return out


@dataclass
class _Poisoned(TeacherSource):
    """A teacher whose logits are NaN at `where` (`(rollout key, position)` pairs), everywhere when empty."""

    where: tuple = ()

    def logits(self, rollout, positions):
        out = super().logits(rollout, positions)
        hit = [not self.where or (rollout.key, t) in self.where for t in positions]
        return [torch.full_like(v, NAN) if h else v for v, h in zip(out, hit, strict=True)]


def _rollouts(n=3):
    g = torch.Generator().manual_seed(8)
    return [
        Rollout(
            "q",
            torch.randint(2, 48, (4,), generator=g).tolist(),
            torch.randint(2, 48, (8,), generator=g).tolist(),
            {"answer": "1"},
            i,
            key=f"0-{i}",
            seed=100 + i,
        )
        for i in range(n)
    ]


def _teacher(name, seed, loss=None):
    return TeacherSource(name, loss or TeacherLoss(), tiny_model("qwen2", seed=seed), lambda r: r.prompt_ids)


def _run(teachers, reward=_reward, config=CONFIG, nodes=3, rollouts=None, student=None):
    student = student or tiny_model("qwen2", logit_scale=2.0)
    settings = PassSettings(nodes_per_rollout=nodes)
    return diagnose_rollouts(student, _Tokenizer(), rollouts or _rollouts(), teachers, reward, config, settings)


def _same(a: dict, b: dict) -> bool:
    """Rows equal bit for bit (NaN equal to NaN)."""
    nan = [k for k in a if isinstance(a[k], float) and math.isnan(a[k])]
    return a.keys() == b.keys() and all(math.isnan(b[k]) for k in nan) and all(a[k] == b[k] for k in a if k not in nan)


def _gad_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOG and r.levelno == logging.WARNING]


def test_nan_teacher_is_undefined_and_the_others_are_as_without_it(caplog):
    a, c = _teacher("a", 1), _teacher("c", 3, TeacherLoss("forward_kl"))
    bad = _Poisoned("b", TeacherLoss(), tiny_model("qwen2", seed=2), lambda r: r.prompt_ids)
    without = _run([a, c])
    with caplog.at_level(logging.WARNING, logger=LOG):
        poisoned = _run([a, bad, c])
    others = [r for r in poisoned.rows if r["teacher"] != "b"]
    assert len(others) == len(without.rows) == 18
    assert all(_same(x, y) for x, y in zip(others, without.rows, strict=True))
    b_rows = [r for r in poisoned.rows if r["teacher"] == "b"]
    assert len(b_rows) == 9 and {r["undefined"] for r in b_rows} == {"non_finite_teacher"}
    assert all(math.isnan(r[k]) for r in b_rows for k in ("param_cos", "param_ci_low", "logit_cos", "param_proj"))
    assert not poisoned.skipped
    (message,) = _gad_warnings(caplog)
    assert "9 of 27 (node, teacher) pairs" in message and "first: teacher 'b', rollout 0-0, position" in message


def test_nan_teacher_at_one_node_leaves_every_other_node_alone():
    # No teacher tokens among the candidates: the bad node's candidates, hence the rollout's random stream, stay put.
    config = dataclasses.replace(CONFIG, teacher_top=0)
    a, b = _teacher("a", 1), _teacher("b", 2)
    clean = _run([a, b], config=config)
    position = clean.rows[0]["position"]
    bad = _Poisoned("b", b.loss, b.model, b.prompt, where=(("0-0", position),))
    poisoned = _run([a, bad], config=config)
    alone = _run([a], config=config)
    hit = [r for r in poisoned.rows if (r["rollout_id"], r["position"]) == ("0-0", position)]
    assert [r["undefined"] for r in hit] == ["", "non_finite_teacher"] and math.isnan(hit[1]["param_cos"])
    # At that node teacher a is measured as if b were absent; everywhere else nothing moved, except b's rollout-level
    # cosine, which sums over the rollout's nodes. The rollout's backward carries b's vectors (of its other nodes) in
    # one run and not in the other, so its parameter-space products agree to float32 rounding, not bit for bit.
    param = {k for k in hit[0] if k.startswith(("param_", "rollout_param_", "ideal_norm2_param"))}
    for key in param:
        assert hit[0][key] == pytest.approx(alone.rows[0][key], rel=1e-5, abs=1e-6, nan_ok=True), key
    assert _same(
        {k: v for k, v in hit[0].items() if k not in param}, {k: alone.rows[0][k] for k in hit[0] if k not in param}
    )
    for x, y in zip(poisoned.rows, clean.rows, strict=True):
        if (x["rollout_id"], x["position"]) == ("0-0", position):
            continue
        if x["teacher"] == "b" and x["rollout_id"] == "0-0":
            x, y = dict(x, rollout_param_cos=0.0), dict(y, rollout_param_cos=0.0)
        assert _same(x, y), (x["rollout_id"], x["position"], x["teacher"])


class _HeadOverflow:
    """The student's logits are NaN wherever the input token is `token` (the head overflowing there, and only there);
    with `token=None`, everywhere."""

    def __init__(self, model, token=None):
        self.token, self.ids, self.keep = token, None, 0
        model.register_forward_pre_hook(self._inputs, with_kwargs=True)
        model.get_output_embeddings().register_forward_hook(self._logits)

    def _inputs(self, module, args, kwargs):
        self.ids, self.keep = kwargs["input_ids"], kwargs.get("logits_to_keep", 0)

    def _logits(self, module, args, out):
        if self.token is None:
            return out * NAN
        ids = self.ids[:, self.keep] if torch.is_tensor(self.keep) else self.ids[:, -self.keep :]
        return out.masked_fill((ids == self.token)[..., None], NAN)


def test_nan_student_makes_its_nodes_undefined_and_an_all_nan_rollout_a_counted_skip(caplog):
    rollouts = _rollouts()
    token = rollouts[1].completion_ids[2]  # nodes right after it see a NaN student
    student = tiny_model("qwen2", logit_scale=2.0)
    _HeadOverflow(student, token)
    with caplog.at_level(logging.WARNING, logger=LOG):
        result = _run([_teacher("a", 1)], nodes=8, rollouts=rollouts, student=student)
    for row in result.rows:
        r = rollouts[int(row["rollout_id"][2:])]
        before = (r.prompt_ids + r.completion_ids)[len(r.prompt_ids) + row["position"] - 1]
        assert (row["undefined"] == "non_finite_student") == (before == token)
        assert (row["candidates"] == []) == (before == token)
    broken = [r for r in result.rows if r["undefined"] == "non_finite_student"]
    assert broken and all(math.isnan(r["param_cos"]) and math.isnan(r["value"]) for r in broken)
    assert any(r["undefined"] == "" for r in result.rows)
    assert "non_finite_student" not in result.skipped
    assert any("non_finite_student" in m and "first: rollout" in m for m in _gad_warnings(caplog))

    student = tiny_model("qwen2", logit_scale=2.0)
    _HeadOverflow(student)
    for strategy in ("uniform", "entropy"):
        settings = PassSettings(nodes_per_rollout=2, node_strategy=strategy)
        everywhere = diagnose_rollouts(student, _Tokenizer(), rollouts, [_teacher("a", 1)], _reward, CONFIG, settings)
        assert everywhere.skipped == {"non_finite_student": 3} and not everywhere.rows and not everywhere.rollouts


def test_unscorable_rollout_reward_skips_only_that_rollout():
    rollouts = _rollouts(4)
    verdicts = {tuple(r.completion_ids): v for r, v in zip(rollouts, [NAN, None, math.inf, 1.0], strict=True)}

    def reward(prompts, completions, completion_ids=None, **columns):
        # The whole completion gets its own verdict; targeted continuations are scored normally.
        return [verdicts.get(tuple(ids), _parity(ids)) for ids in completion_ids]

    result = _run([_teacher("a", 1)], reward=reward, rollouts=rollouts)
    assert result.skipped == {"unscorable_reward": 3}
    assert [r["rollout_id"] for r in result.rollouts] == ["0-3"] and len(result.rows) == 3


def test_unscorable_continuations_are_left_out_of_the_estimate_and_counted(caplog):
    reward = _EveryTenth()
    with caplog.at_level(logging.WARNING, logger=LOG):
        result = _run([_teacher("a", 1)], reward=reward)
    assert reward.unscorable > 0 and result.skipped == {"unscorable_continuation": reward.unscorable}
    assert len(result.rows) == 9 and len(result.rollouts) == 3
    # Each node decoded num_rollouts per candidate; the unscorable ones are out of the counts, not scored 0.
    assert sum(r["rollouts_spent"] - sum(r["success_counts"]) for r in result.rows) == reward.unscorable
    assert all(
        r["rollouts_spent"] == (1 if r["screened_out"] else CONFIG.num_rollouts) * len(r["candidates"])
        for r in result.rows
    )
    assert any(r["undefined"] == "" and not math.isnan(r["param_cos"]) for r in result.rows)
    (message,) = _gad_warnings(caplog)
    assert f"{reward.unscorable} of {sum(r['rollouts_spent'] for r in result.rows)} targeted continuations" in message
    assert "first: rollout 0-" in message and "[" not in message  # a summary, never a list of scores


def test_unscorable_scores_are_missing_samples_not_zeros():
    model = tiny_model("qwen2", vocab_size=16)
    given = []

    def score(continuations):  # 1.0 everywhere, None or NaN for every 10th continuation
        out = [None if i % 20 == 9 else NAN if i % 10 == 9 else 1.0 for i in range(len(continuations))]
        given.extend(out)
        return out

    est = estimate_success(model, torch.tensor([3, 4]), torch.tensor([2, 5, 7]), 10, 2, score)
    assert est.unscorable.tolist() == [1, 1, 1] and est.count.tolist() == [9, 9, 9]
    assert est.mean.tolist() == [1.0, 1.0, 1.0]  # the mean of the scored ones: unbiased, not pulled toward 0
    assert est.decoded == len(given) == 30

    def garbage(continuations):
        return ["x" * 1000] * len(continuations)

    with pytest.raises(ValueError, match="score 0 of 6 is str") as err:
        estimate_success(model, torch.tensor([3, 4]), torch.tensor([2, 5]), 3, 2, garbage)
    assert len(str(err.value)) < 300  # names the first offender, never prints the whole list


def test_candidate_without_any_scored_continuation_makes_its_node_undefined():
    model = tiny_model("qwen2", logit_scale=2.0)
    seq = torch.randint(2, 48, (10,), generator=torch.Generator().manual_seed(0))
    z = model.eval()(input_ids=seq[None, :6]).logits[0, -1].detach()
    lost = int(z.argmax())

    def score(continuations):  # the student's favourite token can never be judged
        return [None if c[0] == lost else _parity(c) for c in continuations]

    teacher = torch.randn(48, generator=torch.Generator().manual_seed(1))
    config = dataclasses.replace(CONFIG, teacher_top=0)
    (first,) = diagnose_nodes(model, [seq], [Node(0, 6, {"t": teacher}, score)], {"t": TeacherLoss()}, config).nodes
    k = first.candidates.tolist().index(lost)
    assert first.success.count[k] == 0 and first.success.unscorable[k] == config.num_rollouts
    assert first.undefined == {"t": "unscorable_continuations"} and math.isnan(first.value)
    assert all(math.isnan(v) for v in (first.teachers["t"].param_cos, first.teachers["t"].param_proj))
    assert first.rollouts_spent == config.num_rollouts * first.candidates.numel()


def test_verifier_raising_on_targeted_continuations_skips_that_rollout_only():
    rollouts = _rollouts()
    victim = rollouts[1].completion_ids

    def reward(prompts, completions, completion_ids=None, **columns):
        if len(completion_ids) > 1 and any(ids[:2] == victim[:2] for ids in completion_ids):
            raise RuntimeError("verifier service down")
        return [_parity(ids) for ids in completion_ids]

    result = _run([_teacher("a", 1)], reward=reward, rollouts=rollouts)
    assert result.skipped == {"verifier_error": 1}
    assert {r["rollout_id"] for r in result.rollouts} == {"0-0", "0-2"}


def test_rollouts_decode_together_yet_each_keeps_its_own_numbers(monkeypatch):
    # A pass diagnoses its rollouts together (one decode per round for all of them), and each node draws only from
    # its own rollout's seed: a rollout gets the same continuations, alone or among others.
    from gad_callbacks.diagnosis import diagnose

    calls = []
    decode = diagnose.rollout_requests
    monkeypatch.setattr(diagnose, "rollout_requests", lambda *a, **k: calls.append(len(a[2])) or decode(*a, **k))
    rollouts = _rollouts()
    together = _run([_teacher("a", 1)], rollouts=rollouts)
    assert calls[0] == 9 and len(calls) <= 2  # the screening round of all 9 nodes, then the rest of the kept ones
    alone = _run([_teacher("a", 1)], rollouts=rollouts[1:2])
    mine = [r for r in together.rows if r["rollout_id"] == "0-1"]
    assert len(mine) == len(alone.rows) == 3
    for x, y in zip(mine, alone.rows, strict=True):
        for key in ("position", "candidates", "success", "success_counts", "screened_out", "pool_weight", "undefined"):
            assert x[key] == y[key], key
        for key in ("param_cos", "logit_cos", "rollout_param_cos", "param_ci_low", "logit_ci_high"):
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-6, nan_ok=True), key


def test_student_overflowing_mid_continuation_leaves_only_that_continuation_unscorable():
    model = tiny_model("qwen2", vocab_size=16, eos_token_id=None)
    _HeadOverflow(model, 5)  # after token 5 the student's next-token logits are NaN
    seen = []

    def score(continuations):
        seen.extend(continuations)
        return [_parity(c) for c in continuations]

    est = estimate_success(model, torch.tensor([3, 4]), torch.tensor([2, 5]), 6, 3, score)
    assert est.count[1] == 0 and est.unscorable[1] == 6  # forcing 5 breaks every one of its continuations
    assert est.count[0] + est.unscorable[0] == 6 and est.decoded == 12
    assert all(5 not in c[:-1] for c in seen)  # the verifier never sees a continuation the student could not finish
