"""
Self-distillation with a privileged context (TRL's `SDFTTrainer`), logging the alignment of the trainer's own
teacher (the student shown the reference solution) and of any other context or teacher you add.

    python recipes/self_distill_with_alignment.py --config configs/self_distill_default.yaml

The dataset needs `prompt` and `privileged_context` columns (the embedded default has both).
"""

# /// script
# requires-python = ">=3.10"
# dependencies = ["gad_callbacks", "trl>=1.16", "peft", "tensorboard"]
# ///

import warnings

from transformers import AutoTokenizer
from trl import ModelConfig, TrlParser, get_peft_config

from gad_callbacks import GradientAlignmentCallback, GradientAlignmentConfig
from gad_callbacks.world.checkpoints import resolve_model
from gad_callbacks.world.recipe_data import DataArguments


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # trl.experimental warns on import
    from trl.experimental.sdft import SDFTConfig, SDFTTrainer


def main(data_args, training_args, model_args, gad_args):
    ################ Model & Tokenizer
    student = resolve_model(model_args.model_name_or_path)
    training_args.model_init_kwargs = {
        "dtype": model_args.dtype,
        "revision": model_args.model_revision,
        "attn_implementation": model_args.attn_implementation,
    }
    tokenizer = AutoTokenizer.from_pretrained(student, revision=model_args.model_revision)

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
    trainer.add_callback(GradientAlignmentCallback(trainer, gad_args))
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    parser = TrlParser((DataArguments, SDFTConfig, ModelConfig, GradientAlignmentConfig))
    main(*parser.parse_args_and_config())
