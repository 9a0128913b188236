"""AlignmentRouter on real TRL trainers: it trains with what it chose, logs it, decides deterministically, refuses
what it cannot route."""

import math

import pytest
import torch

from gad_callbacks import AlignmentRouter, AlignmentRouterConfig
from gad_callbacks.diagnosis.teachers import SelfContext, compose_prompt
from gad_callbacks.integration.context_route import ContextRoute
from gad_callbacks.integration.router import choose, pooled_by_candidate
from gad_callbacks.outputs.records import read_records
from gad_callbacks.outputs.runs import find_runs
from gad_callbacks.world import make_dataset
from tests.integration.helpers import (
    TOKENIZER,
    distillation_trainer,
    gkd_trainer,
    gold_trainer,
    parity_reward,
    save_tiny,
    sdft_trainer,
    tiny_lm,
)
from tests.integration.test_callback import scalars


CONTEXTS = ["hint:base={prompt} Hint: {hint}", "answer:base={prompt} The answer is {answer}."]


def config(**overrides):
    base = dict(
        alignment_every_n_steps=1,
        alignment_rollouts_per_pause=2,
        alignment_nodes_per_rollout=2,
        alignment_targeted_rollouts=3,
        alignment_max_candidates=4,
        alignment_num_bootstrap=50,
    )
    base.update(overrides)
    return AlignmentRouterConfig(**base)


def other_teacher():
    model = tiny_lm(2)
    model.config._name_or_path = ""
    return {"other": (model, TOKENIZER)}


def sdft_router(tmp_path, steps=3, **overrides):
    trainer = sdft_trainer(tmp_path / "out", save_tiny(tmp_path / "student"), steps=steps)
    router = AlignmentRouter(
        trainer,
        config(alignment_trainer_teacher="", alignment_self_contexts=CONTEXTS, **overrides),
        reward_func=parity_reward,
    )
    trainer.add_callback(router)
    return trainer, router


def test_sdft_router_trains_with_its_logged_choice_token_for_token(tmp_path):
    trainer, router = sdft_router(tmp_path, router_strategy="greedy")
    seen = []  # (choice in force, teacher prompt ids SDFT built, the batch's rows)
    original = trainer._prepare_training_batch

    def spy(inputs):
        batch = original(inputs)
        seen.append((router.choice, batch["teacher_input_ids"], batch["teacher_attention_mask"], inputs))
        return batch

    trainer._prepare_training_batch = spy
    trainer.train()

    # What SDFT's teacher read is the chosen context, rendered as the router measured it.
    assert seen and router.route.unrouted() == 0
    rows = {r["prompt"][0]["content"]: r for r in make_dataset(16)}
    contexts = {c.name: c for c in map(SelfContext.parse, CONTEXTS)}
    for choice, ids, mask, inputs in seen:
        for b, example in enumerate(inputs):
            row = rows[example["prompt"][0]["content"]]
            teacher_prompt = compose_prompt(example["prompt"], contexts[choice].template, row)
            expected = trainer._tokenize_prompts([teacher_prompt])[0]
            prompt_part = ids[b][mask[b].bool()].tolist()[: len(expected)]
            assert prompt_part == list(expected), f"step with {choice}: SDFT's teacher prompt is not the context's"

    # Logged: the pause before step 1, then every step; the history is what was logged.
    tb = scalars(tmp_path / "out")
    for key in ("choice", "switches", "prob/hint", "prob/answer", "chosen/hint"):
        assert sorted(tb[f"train/gad/router/{key}"]) == [0, 1, 2, 3], key
    logs = [h for h in trainer.state.log_history if "gad/router/choice" in h]
    # An undefined pool is a gap, not a number.
    assert set(tb["train/gad/router/pooled/answer"]) == {h["step"] for h in logs if "gad/router/pooled/answer" in h}
    assert [h["step"] for h in logs] == [0, 1, 2, 3]
    assert router.history == [[h["step"], router.candidates[int(h["gad/router/choice"])]] for h in logs]
    (run,) = find_runs(tmp_path / "out")
    records = read_records(run / "records")
    for h in logs:
        probs = [h[f"gad/router/prob/{c}"] for c in router.candidates]
        assert math.isclose(sum(probs), 1.0)
        # Greedy: the chosen candidate has the highest pooled alignment of that pause's records.
        step_rows = [r for r in records if r["step"] == h["step"]]
        points, _ = pooled_by_candidate(step_rows, router.candidates, 10, torch.Generator().manual_seed(0))
        for c, p in zip(router.candidates, points.tolist(), strict=True):
            logged = h.get(f"gad/router/pooled/{c}", math.nan)  # an undefined pool is not logged
            assert math.isclose(logged, p, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(p) and math.isnan(logged))
        if not bool(torch.isnan(points).all()):
            assert int(h["gad/router/choice"]) == int(torch.nan_to_num(points, nan=-math.inf).argmax())


@pytest.mark.parametrize("make", [distillation_trainer, gkd_trainer], ids=["distillation", "gkd"])
def test_model_router_swaps_the_trainers_teacher_model(tmp_path, monkeypatch, make):
    import gad_callbacks.integration.router as router_module

    def alternate(points, replicates, strategy, current, generator):  # a switch at every pause, known in advance
        probabilities = torch.zeros(len(points), dtype=torch.float64)
        probabilities[1 - current] = 1.0
        return 1 - current, probabilities

    monkeypatch.setattr(router_module, "choose", alternate)
    trainer = make(tmp_path, steps=3)
    own = trainer.teacher_model
    router = AlignmentRouter(trainer, config(), teachers=other_teacher(), reward_func=parity_reward)
    trainer.add_callback(router)
    used = []
    original = trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        used.append((router.choice, trainer.teacher_model))
        return original(model, inputs, *args, **kwargs)

    trainer.compute_loss = spy
    trainer.train()
    assert router.candidates == ["teacher", "other"]
    assert router.history == [[0, "other"], [1, "teacher"], [2, "other"], [3, "teacher"]]
    models = {"teacher": own, "other": router._prepared["other"]}
    assert [choice for choice, _ in used] == ["other", "teacher", "other"]
    assert all(model is models[choice] for choice, model in used)
    # The trainer's own teacher, swapped out, is still measured: its rows are defined at the pauses it was out.
    (run,) = find_runs(tmp_path)
    rows = [r for r in read_records(run / "records") if r["teacher"] == "teacher" and r["step"] in (1, 3)]
    assert rows and any(not math.isnan(r["param_proj"]) for r in rows)


def test_sdft_contexts_skip_what_sdfts_loss_skips(tmp_path):
    trainer = sdft_trainer(tmp_path / "out", save_tiny(tmp_path / "student"), num_loss_tokens_to_skip=2)
    router = AlignmentRouter(trainer, config(alignment_trainer_teacher="", alignment_self_contexts=CONTEXTS))
    assert [t.skip_positions for t in router.teachers] == [2, 2]


def test_same_seed_same_decisions_and_same_run(tmp_path):
    runs = []
    for i in range(2):
        trainer, router = sdft_router(tmp_path / str(i), steps=2)
        trainer.train()
        weights = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
        runs.append((router.history, router.probabilities, weights))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])


def test_choice_survives_checkpoint_resume(tmp_path):
    trainer = distillation_trainer(tmp_path, steps=2, save_strategy="steps", save_steps=2)
    first = AlignmentRouter(trainer, config(), teachers=other_teacher(), reward_func=parity_reward)
    trainer.add_callback(first)
    trainer.train()
    resumed = distillation_trainer(tmp_path, steps=3)
    router = AlignmentRouter(resumed, config(), teachers=other_teacher(), reward_func=parity_reward)
    resumed.add_callback(router)
    seen = []
    router.route.apply = lambda name, apply=router.route.apply: (seen.append(name), apply(name))
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))
    assert seen[0] == first.choice  # training resumes with the checkpoint's choice, not a fresh measurement
    assert router.history[: len(first.history)] == first.history and router.history[-1][0] == 3


def test_choose():
    gen = torch.Generator().manual_seed(0)
    nan = float("nan")
    assert choose([0.1, 0.5, nan], torch.empty(0, 3), "greedy", 0, gen)[0] == 1
    assert choose([nan, nan], torch.empty(0, 2), "greedy", 1, gen)[0] == 1  # nothing measured: keep the current one
    index, probs = choose([0.1, 0.2], torch.empty(0, 2), "thompson", 0, gen)
    assert (index, probs.tolist()) == (1, [0.0, 1.0])  # nothing to resample: the highest pooled alignment
    assert choose([math.nan, math.nan], torch.ones(5, 2), "thompson", 0, gen)[0] == 0  # nothing defined: stay
    reps = torch.tensor([[0.1, 0.2, 0.0]] * 70 + [[0.3, 0.2, 0.0]] * 30, dtype=torch.float64)
    draws = [choose([0.2, 0.2, 0.0], reps, "thompson", 0, gen) for _ in range(2000)]
    assert torch.allclose(draws[0][1], torch.tensor([0.3, 0.7, 0.0], dtype=torch.float64))
    counts = torch.bincount(torch.tensor([i for i, _ in draws]), minlength=3)
    assert counts[2] == 0 and abs(counts[1] / 2000 - 0.7) < 0.04  # drawn with its probability of being best


def test_refusals(tmp_path):
    student = save_tiny(tmp_path / "student")
    with pytest.raises(ValueError, match="GradientAlignmentCallback"):
        AlignmentRouter(gold_trainer(tmp_path / "g", uld=False), config(), reward_func=parity_reward)
    with pytest.raises(ValueError, match="alignment_trainer_teacher: ''"):
        AlignmentRouter(sdft_trainer(tmp_path / "s1", student), config(alignment_self_contexts=CONTEXTS))
    with pytest.raises(ValueError, match="teacher_model_kind='base'"):
        AlignmentRouter(
            sdft_trainer(tmp_path / "s2", student),
            config(alignment_trainer_teacher="", alignment_self_contexts=["a:live={prompt} {answer}", CONTEXTS[0]]),
        )
    with pytest.raises(ValueError, match="cannot be its teacher"):
        AlignmentRouter(distillation_trainer(tmp_path / "d1"), config(alignment_self_contexts=CONTEXTS))
    with pytest.raises(ValueError, match="at least two candidates"):
        AlignmentRouter(distillation_trainer(tmp_path / "d2"), config())
    with pytest.raises(ValueError, match="router_strategy"):
        config(router_strategy="best")
    with pytest.raises(ValueError, match="not a candidate"):
        AlignmentRouter(distillation_trainer(tmp_path / "d3"), config(router_initial="x"), teachers=other_teacher())


def test_ambiguous_rows_are_refused(tmp_path):
    trainer = sdft_trainer(tmp_path / "out", save_tiny(tmp_path / "student"))
    ds = trainer.train_dataset
    twin = {**ds[0], "hint": ds[0]["hint"] + " (another)"}
    trainer.train_dataset = ds.add_item(twin)
    with pytest.raises(ValueError, match="same prompt as an earlier row"):
        ContextRoute(trainer, {c.name: c for c in map(SelfContext.parse, CONTEXTS)})


def test_a_failing_decision_keeps_the_choice_and_training_goes_on(tmp_path, monkeypatch, caplog):
    import gad_callbacks.integration.router as router_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(router_module, "pooled_by_candidate", broken)
    trainer = distillation_trainer(tmp_path, steps=2)
    cfg = config(router_initial="other", router_measure_at_start=False)
    router = AlignmentRouter(trainer, cfg, teachers=other_teacher(), reward_func=parity_reward)
    trainer.add_callback(router)
    with caplog.at_level("WARNING"):
        trainer.train()
    assert router.history == [[1, "other"], [2, "other"]]
    assert "router decision at step 1 failed (RuntimeError: boom); keeping other" in caplog.text
    assert len([r for r in trainer.state.log_history if "loss" in r]) == 2
