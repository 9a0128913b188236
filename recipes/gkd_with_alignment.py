"""
Generalized knowledge distillation with TRL's `GKDTrainer`, logging each teacher's gradient alignment.

    python recipes/gkd_with_alignment.py --config configs/gkd_default.yaml

GKD keeps no rollouts, so at each pause the callback samples fresh ones from training prompts at the trainer's
temperature. The dataset needs a `messages` column (the embedded default has one).

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
    from trl.experimental.gkd import GKDConfig, GKDTrainer


def main(data_args, training_args, model_args, gad_args):
    ################ Model & Tokenizer
    student, tokenizer = prepare_student(model_args, training_args)
    training_args.teacher_model_init_kwargs = training_args.model_init_kwargs
    training_args.teacher_model_name_or_path = resolve_model(training_args.teacher_model_name_or_path)

    ################ Dataset
    dataset = data_args.load(seed=training_args.seed)
    if "messages" in dataset.column_names and "prompt" in dataset.column_names:
        dataset = dataset.remove_columns("prompt")  # GKD's collator would read a `prompt` column as formatted text

    ################ Training
    trainer = GKDTrainer(
        model=student,
        teacher_model=training_args.teacher_model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.add_callback(GradientAlignmentCallback(trainer, gad_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, GKDConfig, ModelConfig, GradientAlignmentConfig), allow_abbrev=False)
    main(*parser.parse_args_and_config())
