"""Attribution graphs over transcoder features (Ameisen et al. 2025, "Circuit tracing"), with the attention
terms circuit-tracer leaves out, Dunefsky et al.'s factorisation of feature links, and interventions that
check a graph in the spliced model."""

from circuits.graph.build import GraphConfig, check_graph, graph
from circuits.graph.result import AttributionGraph

__all__ = ["AttributionGraph", "GraphConfig", "check_graph", "graph"]
