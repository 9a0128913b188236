"""
On-policy distillation with TRL's `DistillationTrainer`, logging each teacher's gradient alignment to TensorBoard.

    python recipes/distill_with_alignment.py --config configs/distill_default.yaml

On the embedded default (no downloads, CPU, a few minutes). A real model on a GPU (downloads):

    accelerate launch --config_file configs/accelerate/single_process.yaml \
        recipes/distill_with_alignment.py --config configs/qwen3_distill_with_alignment.yaml

Then `tensorboard --logdir <output_dir>/runs`: `train/gad/alignment/<teacher>` and the "gad" custom-scalars tab.

Resume an interrupted run with `--resume_from_checkpoint <output_dir>/checkpoint-N`: the alignment records go on
under the same run id (`<output_dir>/gad/<run_id>/`), each step once.
"""

# /// script
# requires-python = ">=3.10"
# dependencies = ["gad_callbacks", "trl>=1.16", "peft", "tensorboard"]
# ///

from trl import DistillationConfig, DistillationTrainer, ModelConfig, TrlParser, get_peft_config

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.world.checkpoints import resolve_model
from gad_callbacks.world.recipe_support import DataArguments, prepare_student


def main(data_args, training_args, model_args, gad_args):
    ################ Model & Tokenizer
    student, tokenizer = prepare_student(model_args, training_args)
    training_args.teacher_model_name_or_path = resolve_model(training_args.teacher_model_name_or_path)

    ################ Dataset
    dataset = data_args.load(seed=training_args.seed)

    ################ Training
    trainer = DistillationTrainer(
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
    parser = TrlParser((DataArguments, DistillationConfig, ModelConfig, GradientAlignmentConfig), allow_abbrev=False)
    main(*parser.parse_args_and_config())
