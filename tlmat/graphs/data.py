"""The graph object: a ``torch_geometric.data.Data`` with crystal fields."""

from __future__ import annotations

from typing import Any

from torch_geometric.data import Data


class CrystalGraph(Data):
    """A periodic (or molecular) neighbour graph.

    Fields (units): ``z`` atomic numbers (N,); ``pos`` Cartesian positions in Å (N, 3);
    ``cell`` lattice vectors as rows in Å (1, 3, 3), zeros for molecules; ``pbc`` (1, 3);
    ``edge_index`` (2, E) with row 0 the neighbour j (message source) and row 1 the centre
    atom i (target); ``edge_dist`` |r_ij| in Å (E,); ``edge_vec`` r_j + S·cell − r_i in Å
    (E, 3); ``edge_shift`` the integer image S (E, 3). With a line graph: ``line_index``
    (2, T) pairs of edges (a → b) that share their centre atom, and ``line_cos`` the
    cosine of the angle between them (T,).
    """

    def __inc__(self, key: str, value: Any, *args: Any, **kwargs: Any) -> Any:
        if key == "line_index":
            return self.edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)

    @property
    def num_triplets(self) -> int:
        return 0 if getattr(self, "line_index", None) is None else self.line_index.size(1)
