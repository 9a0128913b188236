"""Layer 3: one diagnostic pass over nodes of student rollouts, independent of any trainer."""

from .diagnose import diagnose_node, diagnose_nodes
from .inputs import DiagnosisConfig, Node, TeacherLoss
from .results import Diagnosis, NodeDiagnosis, RolloutAlignment, TeacherAlignment


__all__ = [
    "Diagnosis",
    "DiagnosisConfig",
    "Node",
    "NodeDiagnosis",
    "RolloutAlignment",
    "TeacherAlignment",
    "TeacherLoss",
    "diagnose_node",
    "diagnose_nodes",
]
