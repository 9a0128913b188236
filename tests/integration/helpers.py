"""Tiny TRL trainers on the embedded arithmetic world, with random tiny models (no downloads)."""

from peft import LoraConfig

from gad_callbacks.world import build_tokenizer, make_dataset
from gad_callbacks.world.models import tiny_qwen2


TOKENIZER = build_tokenizer()


def tiny_lm(seed=0, vocab_size=None):
    return tiny_qwen2(TOKENIZER, hidden=32, layers=2, seed=seed, vocab_size=vocab_size)


def parity_reward(prompts, completions, completion_ids=None, **columns):
    """A reward a random model earns about half of the time, and that every token of a completion can flip: even
    count of low token ids. With it, targeted-rollout success varies across candidates, so cosines are defined."""
    return [float(sum(t < 160 for t in ids) % 2 == 0) for ids in completion_ids]


def common_args(output_dir, steps=3, report_to="tensorboard", **extra):
    """Small, CPU, deterministic TrainingArguments; `extra` overrides any of them."""
    args = dict(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=2,
        bf16=False,
        report_to=report_to,
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        use_cpu=True,
        learning_rate=1e-2,
        seed=0,
    )
    args.update(extra)
    return args


def lora_config():
    return LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")


def distillation_trainer(output_dir, peft=False, steps=3, callbacks=None, **extra):
    from trl import DistillationConfig, DistillationTrainer

    ds = make_dataset(16).select_columns(["prompt", "answer", "hint", "solution"])
    args = DistillationConfig(**common_args(output_dir, steps, max_completion_length=12, **extra))
    return DistillationTrainer(
        model=tiny_lm(0),
        teacher_model=tiny_lm(1),
        args=args,
        train_dataset=ds,
        processing_class=TOKENIZER,
        peft_config=lora_config() if peft else None,
        callbacks=callbacks,
    )


def gkd_trainer(output_dir, peft=False, steps=3, **extra):
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    ds = make_dataset(16).select_columns(["messages", "answer", "hint"])
    args = GKDConfig(**common_args(output_dir, steps, max_new_tokens=12, lmbda=0.5, **extra))
    return GKDTrainer(
        model=tiny_lm(0),
        teacher_model=tiny_lm(1),
        args=args,
        train_dataset=ds,
        processing_class=TOKENIZER,
        peft_config=lora_config() if peft else None,
    )


def sdft_trainer(output_dir, student_path, peft=False, steps=3, **extra):
    """SDFT with `teacher_model_kind='base'`: under PEFT the adapters are disabled for the teacher, otherwise TRL
    rebuilds the teacher from the model's path (hence `student_path`, a saved tiny model)."""
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer

    ds = make_dataset(16).select_columns(["prompt", "privileged_context", "answer", "hint"])
    defaults = dict(max_completion_length=12, num_generations=1, distillation_topk=20)
    args = SDFTConfig(**common_args(output_dir, steps, **{**defaults, **extra}))
    return SDFTTrainer(
        model=student_path,
        args=args,
        train_dataset=ds,
        processing_class=TOKENIZER,
        peft_config=lora_config() if peft else None,
    )


def save_tiny(path):
    tiny_lm(0).save_pretrained(path)
    TOKENIZER.save_pretrained(path)
    return str(path)
