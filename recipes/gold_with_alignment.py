"""
GOLD distillation (TRL's `GOLDTrainer`) from a teacher with *another tokenizer* through GOLD's cross-tokenizer ULD
loss, logging the alignment of that teacher's gradient and of any same-tokenizer teacher or context you add.

    python recipes/gold_with_alignment.py --config configs/gold_default.yaml

The dataset needs a `messages` column (the final assistant turn is the off-policy completion; the embedded default
has one). With a teacher that shares the student's tokenizer, set `use_uld_loss: false` (GOLD's generalized JSD).

Resume an interrupted run with `--resume_from_checkpoint <output_dir>/checkpoint-N`: the alignment records go on
under the same run id (`<output_dir>/gad/<run_id>/`), each step once.
"""

# /// script
# requires-python = ">=3.10"
# dependencies = ["gad_callbacks", "trl>=1.16", "peft", "tensorboard"]
# ///

import warnings

from trl import ModelConfig, TrlParser, get_peft_config

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.world.checkpoints import resolve_model
from gad_callbacks.world.recipe_support import DataArguments, prepare_student


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental warns on import
    from trl.experimental.gold import GOLDConfig, GOLDTrainer


def main(data_args, training_args, model_args, gad_args):
    ################ Model & Tokenizer
    student, tokenizer = prepare_student(model_args, training_args)
    teacher = resolve_model(training_args.teacher_model_name_or_path)
    if training_args.use_uld_loss:  # the teacher's own tokenizer, saved with it
        training_args.teacher_tokenizer_name_or_path = resolve_model(
            training_args.teacher_tokenizer_name_or_path or training_args.teacher_model_name_or_path
        )

    ################ Dataset
    dataset = data_args.load(seed=training_args.seed)
    dataset = dataset.remove_columns([c for c in ("prompt",) if c in dataset.column_names])  # GOLD reads `messages`

    ################ Training
    trainer = GOLDTrainer(
        model=student,
        teacher_model=teacher,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.add_callback(GradientAlignmentCallback(trainer, gad_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, GOLDConfig, ModelConfig, GradientAlignmentConfig), allow_abbrev=False)
    main(*parser.parse_args_and_config())
