"""Tiny TRL trainers on the embedded arithmetic world, with random tiny models (no downloads)."""

from peft import LoraConfig

from gad_callbacks.world import build_tokenizer, make_dataset
from gad_callbacks.world.models import tiny_llama, tiny_qwen2


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


def save_tiny(path, seed=0):
    tiny_lm(seed).save_pretrained(path)
    TOKENIZER.save_pretrained(path)
    return str(path)


def other_tokenizer():
    """Another tokenizer of the same world (numbers in groups of up to 3 digits, a larger vocabulary: other tokens,
    other ids): a cross-tokenizer teacher's."""
    return build_tokenizer(vocab_size=400, digit_group=3)


def gold_trainer(output_dir, peft=False, steps=3, teacher_dir=None, uld=True, **extra):
    """GOLD on the world's conversations. `teacher_dir`: a saved teacher with its own tokenizer (cross-tokenizer ULD,
    whose teacher tokenizer GOLD loads from a path; `uld=False`: GOLD's same-tokenizer loss all the same)."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.gold import GOLDConfig, GOLDTrainer

    ds = make_dataset(16).select_columns(["messages", "answer", "hint"])
    defaults = dict(max_completion_length=12, max_length=128, lmbda=1.0)
    if teacher_dir is not None and uld:
        defaults.update(use_uld_loss=True, teacher_tokenizer_name_or_path=str(teacher_dir))
    args = GOLDConfig(**common_args(output_dir, steps, **{**defaults, **extra}))
    teacher = tiny_lm(1) if teacher_dir is None else AutoModelForCausalLM.from_pretrained(str(teacher_dir))
    return GOLDTrainer(
        model=tiny_lm(0),
        teacher_model=teacher,
        args=args,
        train_dataset=ds,
        processing_class=TOKENIZER,
        peft_config=lora_config() if peft else None,
    )


def save_other_teacher(path):
    """A tiny Llama teacher with `other_tokenizer()`, saved with it (GOLD loads the teacher tokenizer from a path)."""
    tokenizer = other_tokenizer()
    tiny_llama(tokenizer, hidden=32, layers=2, seed=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def iw_opd_trainer(output_dir, teacher_dir, peft=False, steps=3, **extra):
    """IW-OPD reads the teacher's tokenizer from the teacher's path to compare it with the student's: `teacher_dir`
    holds a saved tiny teacher (`save_tiny(path, seed=1)`: not the student, whose IW-OPD gradient would be 0)."""
    from transformers import AutoModelForCausalLM
    from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer

    ds = make_dataset(16).select_columns(["messages", "answer", "hint"])
    defaults = dict(max_completion_length=12, max_length=128)
    args = IWOPDConfig(**common_args(output_dir, steps, **{**defaults, **extra}))
    return IWOPDTrainer(
        model=tiny_lm(0),
        teacher_model=AutoModelForCausalLM.from_pretrained(str(teacher_dir)),
        args=args,
        train_dataset=ds,
        processing_class=TOKENIZER,
        peft_config=lora_config() if peft else None,
    )


def alternating_reward(prompts, completions, **columns):
    """Every other completion succeeds: each SDPO group of two has one success, which demonstrates for the other."""
    return [float(i % 2 == 0) for i in range(len(completions))]


def sdpo_trainer(output_dir, student_path, peft=False, steps=3, reward=parity_reward, **extra):
    """SDPO with the parity reward (successful siblings become demonstrations); `student_path`: a saved tiny model
    (SDPO's default EMA teacher is rebuilt from the model's path)."""
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer

    ds = make_dataset(16).select_columns(["prompt", "answer", "hint"])
    defaults = dict(max_completion_length=12, num_generations=2, max_prompt_length=64)
    args = SDPOConfig(**common_args(output_dir, steps, **{**defaults, **extra}))
    return SDPOTrainer(
        model=student_path,
        reward_funcs=reward,
        args=args,
        train_dataset=ds,
        processing_class=TOKENIZER,
        peft_config=lora_config() if peft else None,
    )
