"""Layer 4: records on disk (one schema), the one aggregator, scalar metrics, TensorBoard extras, the HTML report."""

from .aggregate import QuestionAggregate, RunAggregate, TeacherAggregate, aggregate, cluster_labels, per_question
from .records import NodeRecord, node_schema, read_node_records, read_records, to_node_records, write_records


__all__ = [
    "NodeRecord",
    "QuestionAggregate",
    "RunAggregate",
    "TeacherAggregate",
    "aggregate",
    "cluster_labels",
    "node_schema",
    "per_question",
    "read_node_records",
    "read_records",
    "to_node_records",
    "write_records",
]
