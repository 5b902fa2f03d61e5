"""Extreme-token phenomena: massive activations, attention sinks, value drains, residual peaks and
secondary sinks; what massive activations do (perplexity when zeroed or set to their mean); which
heads are active or dormant on which input domain; and how all of it emerges over training
checkpoints, with the massive activations' course fitted per layer.

    from interp.outliers import analyze_outliers, domain_sinks
    report = analyze_outliers(model)            # built-in corpus, 2,048 tokens
    print(report.massive.summary()); report.sinks.figure().show()
    domain_sinks(model).switching()             # heads dormant on one domain, active on another
"""

from interp.outliers.analyze import OutlierAnalysis, analyze_outliers
from interp.outliers.dormant import DomainSinkResult, domain_sinks
from interp.outliers.drains import DrainResult, value_drains
from interp.outliers.dynamics import DynamicsResult, massive_dynamics
from interp.outliers.interventions import InterventionResult, massive_intervention
from interp.outliers.massive import MassiveResult, massive_activations
from interp.outliers.secondary import SecondaryResult, secondary_sinks
from interp.outliers.sinks import SinkResult, attention_sinks

__all__ = [
    "DomainSinkResult", "DrainResult", "DynamicsResult", "InterventionResult", "MassiveResult", "OutlierAnalysis",
    "SecondaryResult", "SinkResult", "analyze_outliers", "attention_sinks", "domain_sinks", "massive_activations",
    "massive_dynamics", "massive_intervention", "secondary_sinks", "value_drains",
]
