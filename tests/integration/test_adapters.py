"""Adapters read each trainer's loss exactly as the trainer computes it, and re-map teacher positions correctly."""

import inspect

import pytest
import torch

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.integration.adapters import adapter_for
from tests.integration.helpers import (
    TOKENIZER,
    distillation_trainer,
    gkd_trainer,
    parity_reward,
    save_tiny,
    sdft_trainer,
)


V = len(TOKENIZER)


def neg_grad(loss_fn, z):
    z = z.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(loss_fn(z), z)
    return -g


def random_logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(V, generator=g, dtype=torch.float64) * 3, torch.randn(V, generator=g, dtype=torch.float64) * 3


def direction_of(adapter, z, zq, sampled=None):
    return adapter.teacher_loss().direction(z, zq, sampled)


def test_distillation_adapter_matches_trainer_loss(tmp_path):
    from trl.trainer.distillation_trainer import _chunked_divergence_loss

    trainer = distillation_trainer(tmp_path, beta=0.3, temperature=0.7, report_to="none")
    z, zq = random_logits(1)
    eye = torch.eye(V, dtype=torch.float64)

    # Older TRL (1.13) takes the chunk size as an argument; later versions read it from the trainer.
    chunked = "chunk_size" in inspect.signature(_chunked_divergence_loss).parameters
    extra = {"chunk_size": 1} if chunked else {}

    def trainer_loss(zz):  # what DistillationTrainer._compute_loss calls, with the trainer's own beta/temperature
        return _chunked_divergence_loss(
            zz.view(1, 1, V),
            zq.view(1, 1, V),
            eye,
            eye,
            torch.ones(1, 1),
            trainer.beta,
            temperature=trainer.temperature,
            **extra,
        )[0]

    torch.testing.assert_close(
        direction_of(adapter_for(trainer), z, zq), neg_grad(trainer_loss, z), rtol=1e-5, atol=1e-6
    )


def test_gkd_adapter_matches_trainer_loss(tmp_path):
    trainer = gkd_trainer(tmp_path, beta=0.2, temperature=0.6, report_to="none")
    z, zq = random_logits(2)

    def trainer_loss(zz):  # GKDTrainer.compute_loss: generalized JSD with beta, and *no* temperature
        return trainer.generalized_jsd_loss(zz.view(1, 1, V), zq.view(1, 1, V), beta=trainer.beta, reduction="sum")

    adapter = adapter_for(trainer)
    assert adapter.temperature() == 0.6 and adapter.teacher_loss().temperature == 1.0
    torch.testing.assert_close(direction_of(adapter, z, zq), neg_grad(trainer_loss, z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    "mode,extra",
    [
        ("topk_logits", dict(distillation_topk=7, distillation_add_tail=True, distillation_alpha=0.4)),
        ("full_logits", dict(distillation_alpha=0.0)),
        ("sampled_token", dict(distillation_alpha=1.0)),
    ],
)
def test_sdft_adapter_matches_trainer_loss(tmp_path, mode, extra):
    from trl.experimental.sdft.loss_utils import (
        compute_full_logit_self_distillation_loss,
        compute_sampled_token_self_distillation_loss,
        compute_topk_self_distillation_loss,
    )

    trainer = sdft_trainer(
        tmp_path / "run",
        save_tiny(tmp_path / "student"),
        temperature=0.8,
        distillation_mode=mode,
        report_to="none",
        **extra,
    )
    a = trainer.args
    z, zq = random_logits(3)
    s = 11

    def trainer_loss(zz):  # SDFT divides both logits by its temperature, then applies the mode's loss
        st, tt = (zz / a.temperature).view(1, 1, V), (zq / a.temperature).view(1, 1, V)
        if mode == "topk_logits":
            return compute_topk_self_distillation_loss(
                st,
                tt,
                distillation_topk=a.distillation_topk,
                distillation_alpha=a.distillation_alpha,
                distillation_add_tail=a.distillation_add_tail,
            ).sum()
        if mode == "full_logits":
            return compute_full_logit_self_distillation_loss(st, tt, distillation_alpha=a.distillation_alpha).sum()
        return compute_sampled_token_self_distillation_loss(
            st, tt, torch.tensor([[s]]), distillation_alpha=a.distillation_alpha
        ).sum()

    got = direction_of(adapter_for(trainer), z, zq, sampled=s)
    torch.testing.assert_close(got, neg_grad(trainer_loss, z), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("peft", [False, True])
def test_sdft_teacher_logits_are_the_trainers_own_remapped(tmp_path, peft):
    # Our trainer-teacher logits at completion position t must equal the logits SDFT computes for its loss there
    # (SDFT reads its teacher on [privileged prompt + completion], a longer prompt than the student's).
    trainer = sdft_trainer(tmp_path / "run", save_tiny(tmp_path / "student"), peft=peft, steps=1, report_to="none")
    trainer.train()
    cb = GradientAlignmentCallback(
        trainer, GradientAlignmentConfig(alignment_trainer_teacher="sdft"), reward_func=parity_reward
    )
    teacher = next(t for t in cb.teachers if t.name == "sdft")
    batch = trainer._buffered_inputs[0]
    rollouts = cb.adapter.rollouts(cb.student, torch.Generator())
    width = batch["completion_ids"].shape[1]
    with torch.no_grad(), trainer._get_teacher_context_for_self_distillation():
        theirs = (
            trainer._forward_logits(
                trainer.accelerator.unwrap_model(trainer.teacher_model),
                batch["teacher_input_ids"],
                batch["teacher_attention_mask"],
                width,
            )
            * trainer.temperature
        )
    for b in range(batch["completion_ids"].shape[0]):
        rollout = rollouts[b]
        assert len(rollout.extras["trainer_teacher_prompt_ids"]) > len(
            rollout.prompt_ids
        )  # the privileged prompt is longer
        positions = list(range(len(rollout.completion_ids)))
        ours = torch.stack(teacher.logits(rollout, positions))
        torch.testing.assert_close(ours, theirs[b, : len(positions)].float(), rtol=1e-4, atol=1e-4)
