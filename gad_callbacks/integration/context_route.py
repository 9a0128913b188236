"""The router's switch for `SDFTTrainer`: which privileged context the trainer's teacher reads.

SDFT renders its teacher prompt from two things only, the row's `prompt` and `privileged_context`, through
`teacher_prompt_template`. A routed context is a template over any of the row's columns (`{answer}`, `{hint}`...),
and those columns never reach SDFT's prompt builder (its dataloader keeps only `prompt` and `privileged_context`).
So the rows are indexed once, by those two values, and the builder installed here renders the chosen context from
the whole row with [`compose_prompt`], the very function that renders it when the router measures it: what is
measured is what is trained with, token for token.
"""

import json
import logging

from ..diagnosis.teachers import compose_prompt


logger = logging.getLogger(__name__)


def _key(prompt, privileged_context) -> str:
    return json.dumps([prompt, privileged_context], sort_keys=True, default=str)


def index_rows(dataset, fields: set[str]) -> dict[str, dict]:
    """
    Every row of `dataset` by its `(prompt, privileged_context)`, holding the `fields` the contexts read. Two rows
    with the same prompt but different fields are refused: SDFT's builder could tell them apart only by their
    privileged context, and the measurement not at all (a rollout is matched to its row by its prompt's tokens).
    """
    if not hasattr(dataset, "__len__"):
        raise ValueError(
            "AlignmentRouter on SDFTTrainer needs a map-style train_dataset (it indexes the rows' columns once); "
            "got an iterable dataset."
        )
    missing = fields - set(dataset.column_names)
    if missing:
        raise ValueError(f"The router's contexts read column(s) {sorted(missing)} that the dataset lacks.")
    columns = sorted(fields | ({"prompt", "privileged_context"} & set(dataset.column_names)))
    rows: dict[str, dict] = {}
    by_prompt: dict[str, dict] = {}
    for i, row in enumerate(dataset.select_columns(columns)):
        read = {f: row[f] for f in fields}
        first = by_prompt.setdefault(_key(row["prompt"], None), read)
        if first != read:
            raise ValueError(
                f"Dataset row {i} has the same prompt as an earlier row but different context columns "
                f"({sorted(fields)}): the router could not tell which row's context a rollout of that prompt was "
                "measured and trained with. Deduplicate the prompts."
            )
        rows[_key(row["prompt"], row.get("privileged_context"))] = row
    return rows


class ContextRoute:
    """
    Installs on an `SDFTTrainer` a teacher-prompt builder that renders the chosen self-distillation context.

    Args:
        trainer (`SDFTTrainer`): The trainer (constructed, not yet training).
        contexts (`dict[str, SelfContext]`): The candidates by name.
    """

    def __init__(self, trainer, contexts: dict):
        from trl.experimental.sdft.sdft_trainer import DemonstrationTeacherContextBuilder

        kind = getattr(trainer.args, "teacher_model_kind", "base")
        wrong = [c.name for c in contexts.values() if c.weights != kind]
        if kind not in ("base", "live") or wrong:
            raise ValueError(
                f"SDFT's teacher has teacher_model_kind={kind!r} weights, so a routed context must too; "
                f"context(s) {wrong or list(contexts)} differ. Use contexts written 'name:{kind}=template' "
                "(and teacher_model_kind 'base' or 'live': an EMA teacher has no context counterpart)."
            )
        fields = set().union(*(c.fields() for c in contexts.values())) - {"prompt"}
        self.rows = index_rows(trainer.train_dataset, fields)
        self.contexts, self.chosen, self.missed = contexts, None, 0
        route = self

        class RoutedContextBuilder(DemonstrationTeacherContextBuilder):
            """SDFT's builder with the teacher prompt rendered from the router's chosen context."""

            def _compose_teacher_prompt(self, prompt, privileged_context):
                row = route.rows.get(_key(prompt, privileged_context))
                if row is None or route.chosen is None:
                    # A prompt the index does not hold (the trainer changed it): SDFT's own prompt, counted.
                    route.missed += 1
                    return super()._compose_teacher_prompt(prompt, privileged_context)
                return compose_prompt(prompt, route.contexts[route.chosen].template, row)

        trainer.teacher_context_builder = RoutedContextBuilder(trainer)

    def apply(self, name: str) -> None:
        self.chosen = name

    def unrouted(self) -> int:
        """Teacher prompts built since the last call that fell back to SDFT's own template (row not found)."""
        missed, self.missed = self.missed, 0
        if missed:
            logger.warning(
                "gad: router: %d SDFT teacher prompt(s) did not match a dataset row and used SDFT's own template.",
                missed,
            )
        return missed
