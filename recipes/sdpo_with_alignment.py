"""
Self-distilled policy optimisation (TRL's `SDPOTrainer`: reward plus self-distillation from the student re-prompted
with a successful sibling rollout), logging the alignment of the trainer's own update direction (reward term and
distillation together) and of any other context or teacher you add, each under the same loss.

    python recipes/sdpo_with_alignment.py --config configs/sdpo_default.yaml

The dataset needs a `prompt` column and the columns the reward functions read (the embedded default: `answer`).

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
from gad_callbacks.world.recipe_support import DataArguments, prepare_student


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental warns on import
    from trl.experimental.sdpo import SDPOConfig, SDPOTrainer


def main(data_args, training_args, model_args, gad_args):
    ################ Model & Tokenizer
    student, tokenizer = prepare_student(model_args, training_args)

    ################ Dataset
    dataset = data_args.load(seed=training_args.seed)

    ################ Training
    trainer = SDPOTrainer(
        model=student,
        reward_funcs=gad_args.reward_func,  # the verifier of the alignment, as the training reward
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.add_callback(GradientAlignmentCallback(trainer, gad_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, SDPOConfig, ModelConfig, GradientAlignmentConfig), allow_abbrev=False)
    main(*parser.parse_args_and_config())
