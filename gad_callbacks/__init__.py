"""gad_callbacks: is your teacher's distillation signal helping? Gradient alignment between each teacher's
distillation gradient and the ideal gradient estimated by targeted rollouts (see METHOD.md in the docs)."""

from .diagnosis import (
    Diagnosis,
    DiagnosisConfig,
    Node,
    NodeDiagnosis,
    PassResult,
    PassSettings,
    Rollout,
    RolloutAlignment,
    SelfContext,
    TeacherAlignment,
    TeacherLoss,
    TeacherSource,
    TrainerDirection,
    context_teacher,
    diagnose_node,
    diagnose_nodes,
    diagnose_rollouts,
    model_teacher,
    pooled_alignment,
    sample_rollouts,
    tokenize_prompts,
)
from .engine.reward_funcs import build_reward_func
from .engine.rollouts import RolloutRequest, estimate_success, rollout_requests
from .engine.verifiers import (
    ChoiceAnswerReward,
    ExactMatchReward,
    NumericAnswerReward,
    RegexMatchReward,
    extract_final_number,
    reward_function_score,
)
from .engine.vjp import parameter_cosines, parameter_gram
from .integration.callback import GradientAlignmentCallback
from .integration.config import GradientAlignmentConfig
from .integration.router import AlignmentRouter, AlignmentRouterConfig
from .method.directions import distillation_direction, distillation_loss, ideal_direction, oracle_teacher_logits
from .method.nodes import candidate_set, entropy, select_nodes
from .method.stats import Summary, best_probabilities, joint_pooled, paired_difference, pooled_ratio, summarize
from .method.success import SuccessEstimate
from .outputs.aggregate import aggregate
from .outputs.compare import Comparison, compare
from .outputs.compare_table import format_comparison
from .outputs.summary import format_table


__version__ = "0.7.0"

__all__ = [
    "AlignmentRouter",
    "AlignmentRouterConfig",
    "ChoiceAnswerReward",
    "ExactMatchReward",
    "PassResult",
    "RegexMatchReward",
    "aggregate",
    "Comparison",
    "compare",
    "format_comparison",
    "build_reward_func",
    "context_teacher",
    "format_table",
    "model_teacher",
    "sample_rollouts",
    "tokenize_prompts",
    "Diagnosis",
    "DiagnosisConfig",
    "GradientAlignmentCallback",
    "GradientAlignmentConfig",
    "SelfContext",
    "Node",
    "NodeDiagnosis",
    "NumericAnswerReward",
    "PassSettings",
    "Rollout",
    "TeacherSource",
    "TrainerDirection",
    "diagnose_rollouts",
    "RolloutAlignment",
    "RolloutRequest",
    "SuccessEstimate",
    "Summary",
    "TeacherAlignment",
    "TeacherLoss",
    "candidate_set",
    "diagnose_node",
    "diagnose_nodes",
    "distillation_direction",
    "distillation_loss",
    "entropy",
    "estimate_success",
    "extract_final_number",
    "ideal_direction",
    "oracle_teacher_logits",
    "joint_pooled",
    "best_probabilities",
    "paired_difference",
    "pooled_alignment",
    "pooled_ratio",
    "parameter_cosines",
    "parameter_gram",
    "reward_function_score",
    "rollout_requests",
    "select_nodes",
    "summarize",
]
