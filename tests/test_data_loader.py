"""Inference batches sized to the graphs and to what the model does with them: M3GNet's
three-body pairs weigh less than ALIGNN's line-graph edges, and no batch exceeds 64."""

from __future__ import annotations

from pathlib import Path

import pytest

from tlmat.data.loader import LARGEST_INFERENCE_BATCH, batch_size_for, inference_batch_size
from tlmat.graphs import GraphSettings
from tlmat.graphs.builder import graph_arrays, structure_arrays
from tlmat.io import read_records
from tlmat.models.base import Backbone


@pytest.fixture(scope="module")
def structures(data: Path):
    records = read_records(data / "perov_5" / "val.csv.gz", [], limit=16)
    return [r.structure for r in records]


def graphs_of(structures, settings: GraphSettings):
    return [graph_arrays(*structure_arrays(s), settings) for s in structures]


def test_cheap_bond_pairs_give_larger_batches(structures) -> None:
    from tlmat.models.m3gnet import M3GNetBackbone

    # M3GNet's graph: 5 Å bonds, three-body pairs within 4 Å (matgl 4's defaults)
    settings = GraphSettings(cutoff=5.0, max_neighbors=None, line_graph=True, line_graph_cutoff=4.0)
    graphs = graphs_of(structures, settings)
    counted_as_edges = batch_size_for(graphs, Backbone.pair_cost)
    weighted = batch_size_for(graphs, M3GNetBackbone.pair_cost)
    assert counted_as_edges < 16  # thousands of pairs a perovskite
    assert weighted >= 32  # measured fastest per structure at 64 (loader.py)
    assert weighted <= LARGEST_INFERENCE_BATCH


def test_small_graphs_stop_at_the_largest_batch(perovskites) -> None:
    # CGCNN's graphs of 5-atom cells: 20,000 nodes + edges would be 300 of them
    assert inference_batch_size(perovskites) == LARGEST_INFERENCE_BATCH
    assert inference_batch_size(perovskites, [0, 1, 2], largest=2) == 2
