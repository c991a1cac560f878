"""Crystal graphs: periodic neighbour graphs, line graphs, distance expansions, cache."""

from tlmat.graphs.builder import (
    GraphArrays,
    build_graph,
    graph_or_problem,
    graphs_or_problems,
    iter_graph_arrays,
)
from tlmat.graphs.cache import CachedGraphs, GraphCache, collate, structure_key
from tlmat.graphs.data import CrystalGraph
from tlmat.graphs.expansions import GaussianExpansion, RadialBasis
from tlmat.graphs.settings import GraphSettings

__all__ = [
    "CachedGraphs",
    "CrystalGraph",
    "GaussianExpansion",
    "GraphArrays",
    "GraphCache",
    "GraphSettings",
    "RadialBasis",
    "build_graph",
    "collate",
    "graph_or_problem",
    "graphs_or_problems",
    "iter_graph_arrays",
    "structure_key",
]
