"""Attacks that measure what a federated pipeline leaks, defence by defence.

* :mod:`attacks.inversion` — gradient inversion (DLG, iDLG, Inverting Gradients) against a client's gradient
  or multi-step FedAvg update and against secure-aggregation sums, with an adaptive attacker per defence
  (clipping, noise, top-k, quantisation, secure aggregation);
* :mod:`attacks.membership` — loss-threshold, shadow-model and LiRA (online/offline) membership inference,
  including the server attacking a client's update and client-level membership;
* :mod:`attacks.audit` — empirical ε lower bounds (Clopper–Pearson, Jagielski et al. 2020; one-run audit of
  Steinke, Nasr, Jagielski 2023);
* :mod:`attacks.canary` — an end-to-end canary-client audit of the DP aggregator beside the ledger's ε;
* :mod:`attacks.metrics` — PSNR/SSIM with optimal matching, label accuracy, ROC/AUC/TPR at low FPR.
"""

from __future__ import annotations

from attacks.audit import (
    AuditResult,
    GaussianAuditReport,
    OneRunAuditResult,
    audit_from_scores,
    audit_gaussian_mechanism,
    clopper_pearson_interval,
    epsilon_lower_bound,
    one_run_audit,
    one_run_epsilon_lower_bound,
)
from attacks.canary import CanaryAuditResult, canary_audit
from attacks.inversion import (
    InversionError,
    InversionResult,
    Observation,
    aggregate_observations,
    apply_defences,
    attack,
    infer_labels,
    observe_gradient,
    observe_update,
    score_reconstruction,
)
from attacks.membership import (
    MembershipScores,
    ShadowPool,
    TargetQueries,
    client_level_attack,
    lira_offline,
    lira_online,
    logit_scaled_confidence,
    loss_threshold_attack,
    shadow_model_attack,
    train_shadow_pool,
    train_target,
)
from attacks.metrics import (
    AttackError,
    AttackParameterError,
    MembershipReport,
    auc,
    balanced_accuracy,
    label_accuracy,
    match_reconstructions,
    mse,
    psnr,
    roc_curve,
    ssim,
    tpr_at_fpr,
)

__all__ = [
    "AttackError",
    "AttackParameterError",
    "AuditResult",
    "CanaryAuditResult",
    "GaussianAuditReport",
    "InversionError",
    "InversionResult",
    "MembershipReport",
    "MembershipScores",
    "Observation",
    "OneRunAuditResult",
    "ShadowPool",
    "TargetQueries",
    "aggregate_observations",
    "apply_defences",
    "attack",
    "audit_from_scores",
    "audit_gaussian_mechanism",
    "auc",
    "balanced_accuracy",
    "canary_audit",
    "client_level_attack",
    "clopper_pearson_interval",
    "epsilon_lower_bound",
    "infer_labels",
    "label_accuracy",
    "lira_offline",
    "lira_online",
    "logit_scaled_confidence",
    "loss_threshold_attack",
    "match_reconstructions",
    "mse",
    "observe_gradient",
    "observe_update",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "psnr",
    "roc_curve",
    "score_reconstruction",
    "shadow_model_attack",
    "ssim",
    "tpr_at_fpr",
    "train_shadow_pool",
    "train_target",
]
