"""Layer 3: one diagnostic pass over nodes of student rollouts, independent of any trainer."""

from .diagnose import diagnose_node, diagnose_nodes
from .inputs import DiagnosisConfig, Node, TeacherLoss, TrainerDirection
from .pooling import pooled_alignment
from .results import Diagnosis, NodeDiagnosis, RolloutAlignment, TeacherAlignment
from .rollout_pass import PassResult, PassSettings, diagnose_rollouts, verify_rollout
from .sampling import sample_rollouts, tokenize_prompts
from .teachers import Rollout, SelfContext, TeacherSource, context_teacher, model_teacher


__all__ = [
    "Diagnosis",
    "DiagnosisConfig",
    "Node",
    "NodeDiagnosis",
    "PassResult",
    "PassSettings",
    "Rollout",
    "RolloutAlignment",
    "SelfContext",
    "TeacherAlignment",
    "TeacherLoss",
    "TeacherSource",
    "TrainerDirection",
    "context_teacher",
    "diagnose_node",
    "diagnose_nodes",
    "diagnose_rollouts",
    "model_teacher",
    "pooled_alignment",
    "sample_rollouts",
    "tokenize_prompts",
    "verify_rollout",
]
