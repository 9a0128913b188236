"""
Self-distillation (TRL's `SDFTTrainer`) that trains, between two pauses, with the privileged context whose
distillation gradient is best aligned with the ideal gradient: the `AlignmentRouter`.

    python recipes/route_teachers.py --config configs/route_teachers_default.yaml

Unlike the other recipes, this one changes the run: at every pause the router measures every context on the same
nodes and the trainer's teacher reads the chosen one until the next pause (`train/gad/router/*` in TensorBoard).
For a `DistillationTrainer` choosing among teacher models, attach `AlignmentRouter` the same way, with the trainer's
teacher and `alignment_extra_teachers` as candidates.

Resume an interrupted run with `--resume_from_checkpoint <output_dir>/checkpoint-N`: the router resumes with the
checkpoint's choice, and its records go on under the same run id.
"""

# /// script
# requires-python = ">=3.10"
# dependencies = ["gad_callbacks", "trl>=1.16", "peft", "tensorboard"]
# ///

import warnings

from trl import ModelConfig, TrlParser, get_peft_config

from gad_callbacks import AlignmentRouter, AlignmentRouterConfig
from gad_callbacks.world.recipe_support import DataArguments, prepare_student


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental warns on import
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer


def main(data_args, training_args, model_args, router_args):
    ################ Model & Tokenizer
    student, tokenizer = prepare_student(model_args, training_args)

    ################ Dataset
    dataset = data_args.load(seed=training_args.seed)

    ################ Training
    trainer = SDFTTrainer(
        model=student,
        args=training_args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.add_callback(AlignmentRouter(trainer, router_args))
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, SDFTConfig, ModelConfig, AlignmentRouterConfig), allow_abbrev=False)
    main(*parser.parse_args_and_config())
