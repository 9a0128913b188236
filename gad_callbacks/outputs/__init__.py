"""Layer 4: records on disk (one schema), runs, atomic files, the one aggregator, scalar metrics, TensorBoard extras,
the HTML report."""

from .aggregate import QuestionAggregate, RunAggregate, TeacherAggregate, aggregate, cluster_labels, per_question
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
    "NodeRecord",
    "QuestionAggregate",
    "RecordFiles",
    "RunAggregate",
    "TeacherAggregate",
    "aggregate",
    "atomic_write",
    "atomic_write_text",
    "clear_run_files",
    "cluster_labels",
    "drop_steps_after",
    "find_runs",
    "is_run_dir",
    "new_run_id",
    "node_schema",
    "per_question",
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
