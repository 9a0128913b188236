"""Layer 4: records on disk (one schema), runs, atomic files, the one aggregator, the teacher comparison, scalar
metrics, TensorBoard extras, the HTML report."""

from .aggregate import (
    QuestionAggregate,
    RunAggregate,
    TeacherAggregate,
    aggregate,
    cluster_labels,
    per_question,
    question_outcomes,
)
from .compare import Comparison, Pair, Ranked, SliceComparison, compare
from .compare_table import format_comparison
from .files import atomic_write, atomic_write_text
from .records import (
    NodeRecord,
    RecordFiles,
    drop_steps_after,
    node_schema,
    read_node_records,
    read_record_files,
    read_records,
    step_files,
    to_node_records,
    write_records,
)
from .runs import (
    clear_run_files,
    find_runs,
    is_run_dir,
    new_run_id,
    read_run_info,
    resolve_run,
    run_id_of,
    write_run_info,
)


__all__ = [
    "Comparison",
    "NodeRecord",
    "Pair",
    "QuestionAggregate",
    "Ranked",
    "RecordFiles",
    "RunAggregate",
    "SliceComparison",
    "TeacherAggregate",
    "aggregate",
    "atomic_write",
    "atomic_write_text",
    "clear_run_files",
    "cluster_labels",
    "compare",
    "drop_steps_after",
    "find_runs",
    "format_comparison",
    "is_run_dir",
    "new_run_id",
    "node_schema",
    "per_question",
    "question_outcomes",
    "read_node_records",
    "read_record_files",
    "read_records",
    "read_run_info",
    "resolve_run",
    "run_id_of",
    "step_files",
    "to_node_records",
    "write_records",
    "write_run_info",
]
