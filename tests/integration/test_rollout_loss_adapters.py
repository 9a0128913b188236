"""GOLD, IW-OPD and SDPO: the direction at a node is `-dL/dz` of the trainer's own `compute_loss`, at settings other
than the defaults.

Each test trains a tiny run for a step, takes the rollouts the adapter reads from it, and runs the trainer's own
`compute_loss` on them with the student's forward replaced by a leaf tensor (the student's logits), so that autograd
gives the trainer's gradient with respect to the student's logits at every position. Our direction at each node must
equal it: exactly where the loss is taken on the rollout alone (GOLD, IW-OPD: one row), and on the trainer's own
micro-batch where the trainer mixes terms normalised over it (SDPO).
"""

from types import SimpleNamespace

import pytest
import torch

from gad_callbacks import TrainerDirection
from gad_callbacks.engine.model_io import logits_at
from gad_callbacks.integration.adapters import adapter_for
from tests.integration.helpers import (
    TOKENIZER,
    alternating_reward,
    gold_trainer,
    iw_opd_trainer,
    save_other_teacher,
    save_tiny,
    sdpo_trainer,
)


V = len(TOKENIZER)


class LeafModel(torch.nn.Module):
    """Stands in for the student in `compute_loss`: its "forward" returns the given logits (a leaf tensor)."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits

    def forward(self, *args, **kwargs):
        return SimpleNamespace(logits=self.logits)


def trainer_gradient(trainer, batch, logits):
    """`-dL/dz` of `trainer.compute_loss` on `batch` when the student's logits are `logits` `[B, S, V]`."""
    leaf = logits.detach().clone().requires_grad_(True)
    loss = trainer.compute_loss(LeafModel(leaf), batch)
    (grad,) = torch.autograd.grad(loss, leaf)
    return -grad


def one_row_batch(rollout):
    ids = torch.tensor([rollout.prompt_ids + rollout.completion_ids])
    labels = ids.clone()
    labels[:, : len(rollout.prompt_ids)] = -100
    prompt = torch.tensor([rollout.prompt_ids])
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "prompts": prompt,
        "prompt_attention_mask": torch.ones_like(prompt),
    }


def directions(source, rollout, positions):
    got = source.logits(rollout, positions)
    assert all(isinstance(d, TrainerDirection) for d in got)
    return torch.stack([d.direction for d in got])


def trained(trainer):
    trainer.train()
    adapter = adapter_for(trainer)
    student = trainer.accelerator.unwrap_model(trainer.model)
    rollouts = [r for r in adapter.rollouts(student, torch.Generator().manual_seed(0)) if r.completion_ids]
    assert rollouts and adapter.rollouts_are_local  # the trainer's own on-policy rollouts, not fresh ones
    assert all(r.row is not None for r in rollouts)  # each maps back to its dataset row (the verifier needs it)
    return adapter, student, rollouts


def slice_logits(student, rollouts, width):
    """The student's logits laid out as in GOLD's / IW-OPD's slices: left-padded prompts of width `width`, then the
    completions (right-padded): position `width + t - 1` predicts completion token t of every row."""
    out = torch.zeros(len(rollouts), width + max(len(r.completion_ids) for r in rollouts), V)
    for b, r in enumerate(rollouts):
        p, seq = len(r.prompt_ids), torch.tensor(r.prompt_ids + r.completion_ids)
        out[b, width - p : width + len(r.completion_ids)] = logits_at(student, seq, range(len(seq)))
    return out


@pytest.mark.parametrize("hybrid", [False, True])
def test_gold_cross_tokenizer_direction_is_the_uld_loss_gradient(tmp_path, hybrid):
    # On the trainer's own on-policy slice (two rows, their own texts): ULD's cross-entropy term is a mean over the
    # slice's tokens and its distillation term a mean over rows, so their ratio must be the slice's, not one row's.
    trainer = gold_trainer(
        tmp_path / "run",
        steps=1,
        teacher_dir=save_other_teacher(tmp_path / "teacher"),
        report_to="none",
        uld_student_temperature=0.8,
        uld_teacher_temperature=1.3,
        uld_crossentropy_weight=0.3,
        uld_use_hybrid_loss=hybrid,
        beta=0.3,
    )
    eos = TOKENIZER.eos_token_id  # completions of different lengths: the slice's normalisations then differ by row
    trainer.model.lm_head.register_forward_hook(lambda module, args, out: out + 4.0 * (torch.arange(V) == eos))
    adapter, student, rollouts = trained(trainer)
    assert adapter.cross_tokenizer_teacher and len(trainer.teacher_tokenizer) != len(TOKENIZER)
    batch = trainer._buffered_inputs[0]
    rows, width = batch["input_ids"].shape[0], batch["prompts"].shape[1]
    assert len({len(r.completion_ids) for r in rollouts[:rows]}) > 1
    source = adapter.trainer_teacher("teacher")
    assert source.loss.loss == "trainer"
    logits = slice_logits(student, rollouts[:rows], width)[:, : batch["input_ids"].shape[1]]
    theirs = trainer_gradient(trainer, batch, logits)
    uld_state = dict(vars(trainer.uld_loss_fn))  # what the trainer's own last call left (it logs `last_*`)
    for b, rollout in enumerate(rollouts[:rows]):
        assert rollout.extras["original_completion_text"] == batch["original_completion_text"][b]
        length = len(rollout.completion_ids)
        ours = directions(source, rollout, list(range(length)))
        torch.testing.assert_close(ours, theirs[b, width - 1 : width - 1 + length], rtol=1e-4, atol=1e-7)
        assert bool(ours.abs().sum(-1).gt(0).any())  # the loss reaches some positions: a real test
    assert {k: v for k, v in vars(trainer.uld_loss_fn).items() if k in uld_state} == uld_state


def test_gold_same_tokenizer_direction_is_the_jsd_gradient(tmp_path):
    trainer = gold_trainer(tmp_path / "run", steps=1, report_to="none", beta=0.3, temperature=0.7)
    adapter, student, rollouts = trained(trainer)
    assert not adapter.cross_tokenizer_teacher
    loss = adapter.teacher_loss()
    source = adapter.trainer_teacher("teacher")
    for rollout in rollouts[:2]:
        p, length = len(rollout.prompt_ids), len(rollout.completion_ids)
        batch = one_row_batch(rollout)
        z = logits_at(student, batch["input_ids"][0], range(p + length))[None]
        theirs = trainer_gradient(trainer, batch, z)[0, p - 1 : p + length - 1]
        positions = list(range(length))
        teacher = source.logits(rollout, positions)
        ours = torch.stack([loss.direction(z[0, p - 1 + t], teacher[t]) for t in positions]).float()
        # GOLD divides by the batch's completion tokens; the direction at a node is per token: a positive factor.
        torch.testing.assert_close(ours / length, theirs, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(
    "extra",
    [
        dict(iw_opd_gamma=1.7, temperature=0.7),  # IW-OPD: prefix weights over the whole rollout
        dict(distillation_objective="jsd", lmbda=1.0, beta=0.4, loss_top_k=1, temperature=0.8),  # sparse top-1
        dict(distillation_objective="jsd", lmbda=1.0, beta=0.0, loss_top_k=5, loss_add_tail=True),  # teacher top-k
    ],
)
def test_iw_opd_direction_is_the_trainer_loss_gradient(tmp_path, extra):
    trainer = iw_opd_trainer(
        tmp_path / "run", save_tiny(tmp_path / "teacher", seed=1), steps=1, report_to="none", **extra
    )
    trainer.train()
    # As generated by vLLM: the slice keeps the sampler's log-probabilities (zeros over the padded prompt), which
    # IW-OPD's gap uses instead of the student's; the adapter must read them from the slice.
    first = trainer._buffered_inputs[0]
    sampled_all = -torch.rand(first["input_ids"].shape, generator=torch.Generator().manual_seed(0)) * 3
    first["rollout_logprobs"] = torch.where(first["labels"] != -100, sampled_all, 0.0)
    adapter = adapter_for(trainer)
    student = trainer.accelerator.unwrap_model(trainer.model)
    rollouts = adapter.rollouts(student, torch.Generator())
    source = adapter.trainer_teacher("teacher")
    for i, rollout in enumerate(rollouts[:2]):  # the first slice's two rows
        p, length = len(rollout.prompt_ids), len(rollout.completion_ids)
        sampled = first["rollout_logprobs"][i][first["labels"][i] != -100]
        assert torch.equal(rollout.extras["rollout_logprobs"], sampled)
        batch = one_row_batch(rollout)
        batch["rollout_logprobs"] = torch.cat([torch.zeros(p), sampled])[None]
        metrics_before = {k: list(v) for k, v in trainer._metrics["train"].items()}
        ours = directions(source, rollout, list(range(length)))
        assert {k: list(v) for k, v in trainer._metrics["train"].items()} == metrics_before  # nothing logged
        z = logits_at(student, batch["input_ids"][0], range(p + length))[None]
        theirs = trainer_gradient(trainer, batch, z)[0, p - 1 : p + length - 1]
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-8)
        assert bool(ours.abs().sum(-1).gt(0).all())


@pytest.mark.parametrize(
    "extra",
    [
        dict(distillation_weight=0.4, distillation_mode="full_logits", distillation_alpha=0.3, temperature=0.8),
        dict(distillation_weight=0.7, loss_type="grpo", importance_sampling_level="sequence"),
        dict(distillation_weight=1.0, distillation_mode="topk_logits", distillation_topk=9, distillation_alpha=0.5),
        # Log-probabilities kept from generation (num_iterations > 1): clipped ratios and the distillation IS weight.
        dict(distillation_weight=0.6, num_iterations=2, epsilon=0.01, distillation_is_clip=1.0001),
    ],
)
def test_sdpo_direction_is_the_trainer_loss_gradient_on_its_micro_batch(tmp_path, extra):
    trainer = sdpo_trainer(
        tmp_path / "run",
        save_tiny(tmp_path / "student"),
        steps=1,
        report_to="none",
        teacher_model_kind="live",
        reward=alternating_reward,
        **extra,
    )
    # Completions of different lengths (EOS made likely): the trainer's normalisations by the micro-batch's tokens
    # and by each row's length then differ, and must each be matched.
    eos = TOKENIZER.eos_token_id
    trainer.model.lm_head.register_forward_hook(lambda module, args, out: out + 4.0 * (torch.arange(V) == eos))
    adapter, student, rollouts = trained(trainer)
    batch = trainer._buffered_inputs[0]
    rows, width = batch["completion_ids"].shape
    assert len(set(batch["completion_mask"].sum(-1).tolist())) > 1
    assert ("old_per_token_logps" in batch) == ("num_iterations" in extra)
    assert len(rollouts) >= rows  # the micro-batch's rows come first, in order
    prompt_width = batch["prompt_ids"].shape[1]
    # The trainer's layout: left-padded prompts, right-padded completions; position P - 1 + t predicts token t.
    logits = torch.zeros(rows, prompt_width + width, V)
    for b, rollout in enumerate(rollouts[:rows]):
        p, length = len(rollout.prompt_ids), len(rollout.completion_ids)
        seq = torch.tensor(rollout.prompt_ids + rollout.completion_ids)
        logits[b, prompt_width - 1 : prompt_width - 1 + length] = logits_at(student, seq, range(p - 1, p + length - 1))
    trainer.model.train()  # compute_loss divides by the accumulation steps in training mode only: a positive factor
    theirs = trainer_gradient(trainer, batch, logits) * trainer.current_gradient_accumulation_steps
    own = adapter.trainer_teacher("sdpo")
    demonstrated = [r.extras["demonstrated"] for r in rollouts[:rows]]
    assert any(demonstrated) and not all(demonstrated)  # both kinds of rollout are in the micro-batch
    checked = 0
    for b, rollout in enumerate(rollouts[:rows]):
        length = len(rollout.completion_ids)
        got = own.logits(rollout, list(range(length)))
        want = theirs[b, prompt_width - 1 : prompt_width - 1 + length]
        if got[0] is None:  # no demonstration for this rollout and no policy term: no signal in the trainer's loss
            assert extra["distillation_weight"] == 1.0 and not rollout.extras["demonstrated"]
            assert float(want.abs().max()) == 0.0
            continue
        torch.testing.assert_close(torch.stack([d.direction for d in got]), want, rtol=1e-4, atol=1e-7)
        checked += 1
    assert checked == (rows if extra["distillation_weight"] < 1 else sum(demonstrated))
