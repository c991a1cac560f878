"""Structure → neighbour graph, with the checks a model needs (known elements, no
isolated atoms); bad structures are reported, not fatal."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from itertools import islice, tee

import numpy as np
import torch
from pymatgen.core import Element, Molecule, Structure

from tlmat.graphs.data import CrystalGraph
from tlmat.graphs.neighbors import (
    Neighbors,
    bond_pairs,
    nearest_neighbor_list,
    nearest_neighbor_lists,
)
from tlmat.graphs.settings import GraphSettings
from tlmat.io.records import InputError, Problem, ProblemLog, Reason, Record


@dataclass
class GraphArrays:
    """One graph as numpy arrays: what the cache stores and :class:`CrystalGraph` wraps."""

    z: np.ndarray  # (N,) int8 atomic numbers
    pos: np.ndarray  # (N, 3) float32, Å
    cell: np.ndarray  # (3, 3) float32, Å (zeros for molecules)
    pbc: np.ndarray  # (3,) bool
    edge_index: np.ndarray  # (2, E) int32: (neighbour j, centre i)
    edge_dist: np.ndarray  # (E,) float32, Å
    edge_vec: np.ndarray  # (E, 3) float32, Å
    edge_shift: np.ndarray  # (E, 3) int8 image of j
    line_index: np.ndarray | None = None  # (2, T) int32 edge pairs sharing a centre
    line_cos: np.ndarray | None = None  # (T,) float32

    @property
    def num_nodes(self) -> int:
        return len(self.z)

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    def to_data(self) -> CrystalGraph:
        """A PyTorch Geometric graph (PyG wants int64 indices)."""
        out = {
            "z": torch.from_numpy(self.z.astype(np.int64)),
            "pos": torch.from_numpy(np.ascontiguousarray(self.pos)),
            "cell": torch.from_numpy(np.ascontiguousarray(self.cell)).unsqueeze(0),
            "pbc": torch.from_numpy(np.ascontiguousarray(self.pbc)).unsqueeze(0),
            "edge_index": torch.from_numpy(self.edge_index.astype(np.int64)),
            "edge_dist": torch.from_numpy(np.ascontiguousarray(self.edge_dist)),
            "edge_vec": torch.from_numpy(np.ascontiguousarray(self.edge_vec)),
            "edge_shift": torch.from_numpy(self.edge_shift.astype(np.int64)),
        }
        if self.line_index is not None:
            out["line_index"] = torch.from_numpy(self.line_index.astype(np.int64))
            out["line_cos"] = torch.from_numpy(np.ascontiguousarray(self.line_cos))
        return CrystalGraph(num_nodes=len(self.z), **out)

    def equals(self, other: GraphArrays) -> bool:
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if (a is None) != (b is None) or (a is not None and not np.array_equal(a, b)):
                return False
        return True


def structure_arrays(
    structure: Structure | Molecule,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Atomic numbers, Cartesian positions (Å), cell (Å) and periodicity of a structure."""
    z = np.array(structure.atomic_numbers, dtype=np.int64)
    pos = np.asarray(structure.cart_coords, dtype=np.float64)
    if isinstance(structure, Structure):
        cell = np.asarray(structure.lattice.matrix, dtype=np.float64)
        pbc = np.asarray(structure.lattice.pbc, dtype=bool)
    else:
        cell, pbc = np.zeros((3, 3)), np.zeros(3, dtype=bool)
    return z, pos, cell, pbc


def atom_graph(
    z: np.ndarray, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, settings: GraphSettings
) -> tuple[GraphArrays, Neighbors]:
    """The neighbour graph of one structure without its line graph, and the float64
    neighbour list it came from (what :func:`add_line_graphs` needs)."""
    pairs = nearest_neighbor_list(pos, cell, pbc, settings.cutoff, settings.max_neighbors)
    arrays = GraphArrays(
        z=z.astype(np.int8),
        pos=pos.astype(np.float32),
        cell=cell.astype(np.float32),
        pbc=pbc.astype(bool),
        edge_index=np.stack([pairs.neighbors, pairs.centers]).astype(np.int32),
        edge_dist=pairs.distances.astype(np.float32),
        edge_vec=pairs.vectors.astype(np.float32),
        edge_shift=pairs.shifts.astype(np.int8),
    )
    return arrays, pairs


def atom_graphs(
    z: Sequence[np.ndarray],
    pos: Sequence[np.ndarray],
    cell: Sequence[np.ndarray],
    settings: GraphSettings,
) -> list[tuple[GraphArrays, Neighbors]]:
    """:func:`atom_graph` of many periodic structures, bit for bit the same, the
    neighbours selected (:func:`~tlmat.graphs.neighbors.nearest_neighbor_lists`) and the
    arrays converted once for all of them."""
    if not z:
        return []
    if settings.max_neighbors is None:
        pbc = np.ones(3, dtype=bool)
        return [atom_graph(*arrays, pbc, settings) for arrays in zip(z, pos, cell, strict=True)]
    pairs = nearest_neighbor_lists(pos, cell, settings.cutoff, settings.max_neighbors)
    atoms = ptr_from_counts([len(x) for x in z])
    edges = ptr_from_counts([len(p.centers) for p in pairs])
    all_z = np.concatenate(z).astype(np.int8)
    all_pos = np.concatenate(pos).astype(np.float32)
    cells = np.asarray(cell, dtype=np.float64).astype(np.float32)
    edge_index = np.stack(
        [np.concatenate([p.neighbors for p in pairs]), np.concatenate([p.centers for p in pairs])]
    ).astype(np.int32)
    distances = np.concatenate([p.distances for p in pairs]).astype(np.float32)
    vectors = np.concatenate([p.vectors for p in pairs]).astype(np.float32)
    shifts = np.concatenate([p.shifts for p in pairs]).astype(np.int8)
    pbc = np.ones(3, dtype=bool)
    graphs = []
    for s, found in enumerate(pairs):
        a, b, e, f = atoms[s], atoms[s + 1], edges[s], edges[s + 1]
        arrays = GraphArrays(
            all_z[a:b],
            all_pos[a:b],
            cells[s],
            pbc,
            edge_index[:, e:f],
            distances[e:f],
            vectors[e:f],
            shifts[e:f],
        )
        graphs.append((arrays, found))
    return graphs


def ptr_from_counts(counts: Sequence[int]) -> np.ndarray:
    """Offsets (int64) of consecutive blocks of ``counts`` items: ``[0, c0, c0 + c1, …]``,
    as PyG's ``ptr`` and the cache's shards store them."""
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def add_line_graphs(
    graphs: Sequence[GraphArrays], pairs: Sequence[Neighbors], settings: GraphSettings
) -> None:
    """Fill in the line graphs (bond pairs and their angle cosines) of many graphs at once.

    The pairs of all graphs are joined into one neighbour list (centres offset per
    graph), so the per-call cost of numpy is paid once per chunk, not once per structure;
    cosines come from the float64 bond vectors of ``pairs``.
    """
    if not graphs:
        return
    atoms = np.array([g.num_nodes for g in graphs])
    edges = np.array([len(p.centers) for p in pairs])
    atom_offsets = np.cumsum(atoms) - atoms
    edge_offsets = np.cumsum(edges) - edges
    centers = np.concatenate([p.centers + o for p, o in zip(pairs, atom_offsets, strict=True)])
    distances = np.concatenate([p.distances for p in pairs])
    vectors = np.concatenate([p.vectors for p in pairs])
    allowed = None
    if settings.line_graph_cutoff is not None:
        allowed = distances <= settings.line_graph_cutoff
    line = bond_pairs(centers, len(centers), allowed)
    unit = vectors / distances[:, None]
    n_atoms, n_bonds = int(atoms.sum()), len(centers)
    degree = n_bonds // max(n_atoms, 1)
    # Σ dᵢ(dᵢ − 1) = E(d − 1) with E = N·d holds only if every dᵢ = d (Cauchy–Schwarz)
    uniform = n_bonds == n_atoms * degree and len(line[0]) == n_bonds * (degree - 1)
    if allowed is None and degree > 1 and uniform:
        # every atom has the same degree d (k-nearest graphs), so the pairs are each
        # atom's d × d Gram matrix of unit bond vectors without its diagonal, row by row
        unit = unit.reshape(-1, degree, 3)
        gram = np.matmul(unit, unit.transpose(0, 2, 1))
        # without the diagonal, in row order: drop the first entry of the flattened
        # d × d block, and the diagonal falls into the last column of a d − 1 by d + 1 view
        n_centres = len(gram)
        flat = gram.reshape(n_centres, degree * degree)[:, 1:]
        cos = flat.reshape(n_centres, degree - 1, degree + 1)[:, :, :degree].reshape(-1)
    else:
        cos = np.einsum("ij,ij->i", unit[line[0]], unit[line[1]])
    cos = np.clip(cos, -1.0, 1.0).astype(np.float32)
    line = line.astype(np.int32)
    # both bonds of a pair belong to one graph, and pairs come sorted by their first bond
    bounds = np.searchsorted(line[0], np.r_[edge_offsets, n_bonds])
    # back to each graph's own bond numbers in one pass; the graphs then hold views
    line -= np.repeat(edge_offsets.astype(np.int32), np.diff(bounds))
    for k, graph in enumerate(graphs):
        lo, hi = bounds[k], bounds[k + 1]
        graph.line_index = line[:, lo:hi]
        graph.line_cos = cos[lo:hi]


def graph_arrays(
    z: np.ndarray, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray, settings: GraphSettings
) -> GraphArrays:
    """Build the neighbour graph (and line graph when asked) of one structure."""
    arrays, pairs = atom_graph(z, pos, cell, pbc, settings)
    if settings.line_graph:
        add_line_graphs([arrays], [pairs], settings)
    return arrays


def graph_problem(arrays: GraphArrays, settings: GraphSettings) -> tuple[Reason, str] | None:
    """Why a built graph cannot be used, or ``None``."""
    degree = np.bincount(arrays.edge_index[1], minlength=arrays.num_nodes)
    lonely = np.flatnonzero(degree < settings.min_neighbors)
    if len(lonely):
        atom = int(lonely[0])
        symbol = Element.from_Z(int(arrays.z[atom])).symbol
        return (
            Reason.ISOLATED_ATOM,
            f"{len(lonely)} atom(s) with fewer than {settings.min_neighbors} neighbour(s) "
            f"within {settings.cutoff} Å, e.g. atom {atom} ({symbol}); "
            "a larger cutoff may help",
        )
    return None


def element_problem(z: np.ndarray, elements: Collection[int] | None) -> tuple[Reason, str] | None:
    if elements is None:
        return None
    unknown = sorted(set(z.tolist()) - set(elements))
    if unknown:
        symbols = ", ".join(Element.from_Z(int(u)).symbol for u in unknown)
        return Reason.UNKNOWN_ELEMENT, f"{symbols} not in the model's element vocabulary"
    return None


def checked_graph(
    z: np.ndarray,
    pos: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    settings: GraphSettings,
    elements: Collection[int] | None,
    where: str,
    id: str,
    built: tuple[GraphArrays, Neighbors] | None = None,
) -> tuple[GraphArrays, Neighbors] | Problem:
    """The graph (and float64 neighbour list) of a structure given as arrays, or why it
    has none: an element outside ``elements``, or an atom short of neighbours.
    ``built``: the :func:`atom_graph` already computed for these arrays."""
    fault = element_problem(z, elements)
    if fault is None:
        arrays, pairs = built or atom_graph(z, pos, cell, pbc, settings)
        fault = graph_problem(arrays, settings)
    if fault is not None:
        return Problem(where or id, fault[0], fault[1], id)
    return arrays, pairs


def _graph_and_pairs_or_problem(
    record: Record, settings: GraphSettings, elements: Collection[int] | None
) -> tuple[GraphArrays, Neighbors] | Problem:
    z, pos, cell, pbc = structure_arrays(record.structure)
    return checked_graph(z, pos, cell, pbc, settings, elements, record.where, record.id)


def graphs_or_problems(
    records: Sequence[Record], settings: GraphSettings, elements: Collection[int] | None = None
) -> list[GraphArrays | Problem]:
    """The graph of each record, or the reason it has none (line graphs built together)."""
    results = [_graph_and_pairs_or_problem(r, settings, elements) for r in records]
    built = [r for r in results if not isinstance(r, Problem)]
    if settings.line_graph:
        add_line_graphs([g for g, _ in built], [p for _, p in built], settings)
    return [r if isinstance(r, Problem) else r[0] for r in results]


def graph_or_problem(
    record: Record, settings: GraphSettings, elements: Collection[int] | None = None
) -> GraphArrays | Problem:
    """The graph of one record, or the reason it has none."""
    return graphs_or_problems([record], settings, elements)[0]


def build_graph(
    structure: Structure | Molecule | Record,
    settings: GraphSettings | None = None,
    elements: Collection[int] | None = None,
) -> CrystalGraph:
    """The graph of one structure; raises :class:`InputError` when it has none.

    Example:
        >>> settings = GraphSettings(cutoff=8.0, max_neighbors=12)
        >>> graph = build_graph(Structure.from_file("NaCl.cif"), settings)
        >>> graph.edge_index.shape  # (2, 12 * n_atoms)
    """
    record = structure if isinstance(structure, Record) else Record("structure", structure)
    result = graph_or_problem(record, settings or GraphSettings(), elements)
    if isinstance(result, Problem):
        raise InputError(result)
    return result.to_data()


def _build_chunk(
    args: tuple[list[Record], GraphSettings, Collection[int] | None],
) -> list[GraphArrays | Problem]:
    records, settings, elements = args
    return graphs_or_problems(records, settings, elements)


def iter_graph_arrays(
    records: Iterable[Record],
    settings: GraphSettings,
    log: ProblemLog,
    elements: Collection[int] | None = None,
    workers: int = 1,
    chunk_size: int = 256,
) -> Iterator[tuple[Record, GraphArrays]]:
    """(record, graph) for every record that has a usable graph; the others go to ``log``."""
    iterator = iter(records)
    chunks = iter(lambda: list(islice(iterator, chunk_size)), [])
    if workers > 1:
        pool = ProcessPoolExecutor(workers)
        # tee: each chunk is sent to the pool and kept here to pair with its results
        mine, theirs = tee(chunks)
        pairs = zip(
            mine, pool.map(_build_chunk, ((c, settings, elements) for c in theirs)), strict=True
        )
    else:
        pairs = ((chunk, _build_chunk((chunk, settings, elements))) for chunk in chunks)
    try:
        for chunk, results in pairs:
            for record, result in zip(chunk, results, strict=True):
                if isinstance(result, Problem):
                    log.skip(result)
                else:
                    yield record, result
    finally:
        if workers > 1:
            pool.shutdown(cancel_futures=True)
