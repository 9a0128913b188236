"""
Importance-weighted on-policy distillation (TRL's `IWOPDTrainer`), logging the alignment of the teacher's IW-OPD
gradient (per-token weights included) and of any other teacher or context you add, each under the same loss.

    python recipes/iw_opd_with_alignment.py --config configs/iw_opd_default.yaml

The dataset needs a `messages` column (IW-OPD's collator reads it; the embedded default has one).

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
    from trl.experimental.iw_opd import IWOPDConfig, IWOPDTrainer


def main(data_args, training_args, model_args, gad_args):
    ################ Model & Tokenizer
    student, tokenizer = prepare_student(model_args, training_args)
    training_args.teacher_model_name_or_path = resolve_model(training_args.teacher_model_name_or_path)

    ################ Dataset
    dataset = data_args.load(seed=training_args.seed)
    dataset = dataset.remove_columns([c for c in ("prompt",) if c in dataset.column_names])  # IW-OPD reads `messages`

    ################ Training
    trainer = IWOPDTrainer(
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
    parser = TrlParser((DataArguments, IWOPDConfig, ModelConfig, GradientAlignmentConfig), allow_abbrev=False)
    main(*parser.parse_args_and_config())
