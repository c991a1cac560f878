"""Periodic neighbour lists (pymatgen's Cython cell lists) and CGCNN-style nearest-k
selection."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pymatgen.optimization.neighbors import find_points_in_spheres


@dataclass
class Neighbors:
    """Directed pairs (centre i → neighbour j at image S), sorted by centre then distance."""

    centers: np.ndarray  # (E,) int
    neighbors: np.ndarray  # (E,) int
    shifts: np.ndarray  # (E, 3) int
    distances: np.ndarray  # (E,) float, Å
    vectors: np.ndarray | None  # (E, 3) float, r_j + S·cell − r_i, Å

    def take(self, index: np.ndarray) -> Neighbors:
        return Neighbors(
            self.centers[index],
            self.neighbors[index],
            self.shifts[index],
            self.distances[index],
            None if self.vectors is None else self.vectors[index],
        )


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> Neighbors:
    """All pairs within ``cutoff`` Å, periodic images included along periodic axes."""
    positions, box = _search_arrays(positions, cell, pbc)
    return _with_vectors(_pairs(positions, box, pbc, cutoff), positions, box)


def _search_arrays(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and box as pymatgen's search takes them (a unit box for a molecule)."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    box = np.ascontiguousarray(cell if np.any(pbc) else np.eye(3), dtype=np.float64)
    return positions, box


def _pairs(positions: np.ndarray, box: np.ndarray, pbc: np.ndarray, cutoff: float) -> Neighbors:
    """:func:`neighbor_list` without the bond vectors (filled in for the pairs kept)."""
    # pymatgen's search is called directly: Structure.get_neighbor_list adds Python
    # overhead that dominates for the small cells of most datasets
    i, j, images, d = find_points_in_spheres(
        positions, positions, float(cutoff), np.asarray(pbc, dtype=np.int64), box, 1e-8
    )
    not_self = (i != j) | images.any(axis=1)
    if not not_self.all():
        i, j, d, images = i[not_self], j[not_self], d[not_self], images[not_self]
    # Stable sort on the exact distances, keeping the search's order among equal ones: the
    # original CGCNN loader does exactly this (get_all_neighbors, then sorted by distance),
    # so the nearest-k selection below picks the same atoms it does, ties included.
    order = np.lexsort((d, i))
    return Neighbors(i[order], j[order], images[order].astype(np.int64), d[order], None)


def _with_vectors(pairs: Neighbors, positions: np.ndarray, box: np.ndarray) -> Neighbors:
    pairs.vectors = positions[pairs.neighbors] + pairs.shifts @ box - positions[pairs.centers]
    return pairs


def _boundary_tie(pairs: Neighbors, n_atoms: int, k: int) -> bool:
    """Whether some atom's k-th neighbour distance is shared, exactly, by a pair beyond the
    k-th with a different neighbour atom (ties among images of one atom change nothing a
    distance-based model sees)."""
    counts = np.bincount(pairs.centers, minlength=n_atoms)
    starts = np.cumsum(counts) - counts
    atoms = np.flatnonzero(counts > k)
    kth = starts[atoms] + k - 1
    tied = pairs.distances[kth] == pairs.distances[kth + 1]
    if not tied.any():
        return False
    atoms, boundary = atoms[tied], pairs.distances[kth[tied]]
    # pairs of the tied atoms at their boundary distance: do they name more than one atom?
    at_boundary = np.full(n_atoms, -1.0)  # no distance equals -1: untied atoms drop out
    at_boundary[atoms] = boundary
    in_group = pairs.distances == at_boundary[pairs.centers]
    centers, neighbors = pairs.centers[in_group], pairs.neighbors[in_group]
    first = np.full(n_atoms, -1)
    first[centers[::-1]] = neighbors[::-1]
    return bool(np.any(neighbors != first[centers]))


def nearest_neighbor_list(
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    max_neighbors: int | None,
) -> Neighbors:
    """The ``max_neighbors`` nearest neighbours of every atom within ``cutoff`` Å.

    Exactly the selection of a full search at ``cutoff`` (ties included), but first
    searched within a smaller radius guessed from the atomic density: when every atom
    already has ``max_neighbors`` neighbours there, no farther atom can be among its
    nearest. Dense crystals need only a fraction of the 8 Å images this way.

    Distances are bitwise the same in both searches, but the order of exactly equal ones
    depends on the search radius; when such a tie between different atoms straddles the
    k-th neighbour, the full search decides, so that the selection is always the original
    CGCNN loader's.
    """
    n_atoms = len(positions)
    positions, box = _search_arrays(positions, cell, pbc)
    if max_neighbors is not None and n_atoms and bool(np.all(pbc)):
        guess = _guess_radius(float(np.linalg.det(cell)), n_atoms, max_neighbors)
        if guess < cutoff:
            pairs = _pairs(positions, box, pbc, guess)
            enough = np.bincount(pairs.centers, minlength=n_atoms).min() >= max_neighbors
            if enough and not _boundary_tie(pairs, n_atoms, max_neighbors):
                return _with_vectors(nearest(pairs, n_atoms, max_neighbors), positions, box)
    pairs = nearest(_pairs(positions, box, pbc, cutoff), n_atoms, max_neighbors)
    return _with_vectors(pairs, positions, box)


def _guess_radius(determinant: float, n_atoms: int, max_neighbors: int) -> float:
    """Radius (Å) of a sphere holding ``max_neighbors + 1`` atoms at the cell's density,
    with a margin (Python floats: a vectorised power may round the last bit otherwise,
    and the radius decides the order of exactly tied neighbours)."""
    volume_per_atom = abs(determinant) / n_atoms
    return 1.3 * (3 * (max_neighbors + 1) * volume_per_atom / (4 * math.pi)) ** (1 / 3) + 0.5


def nearest_neighbor_lists(
    positions: Sequence[np.ndarray], cells: Sequence[np.ndarray], cutoff: float, max_neighbors: int
) -> list[Neighbors]:
    """:func:`nearest_neighbor_list` of many periodic structures, bit for bit the same,
    with the sorting and the selection done once for all of them: for the small cells of
    most datasets numpy's cost per call, not the search, dominated (≈ 100 of 120 µs)."""
    periodic, pbc = np.ones(3, dtype=np.int64), np.ones(3, dtype=bool)
    results: list[Neighbors | None] = [None] * len(positions)
    determinants = np.linalg.det(np.asarray(cells, dtype=np.float64)) if len(cells) else []
    searched: list[int] = []
    found = []
    for s, (pos, cell) in enumerate(zip(positions, cells, strict=True)):
        n_atoms = len(pos)
        guess = _guess_radius(float(determinants[s]), n_atoms, max_neighbors) if n_atoms else 0
        if not n_atoms or guess >= cutoff:
            results[s] = nearest_neighbor_list(pos, cell, pbc, cutoff, max_neighbors)
            continue
        pos, box = _search_arrays(pos, cell, pbc)
        searched.append(s)
        found.append((pos, box, *find_points_in_spheres(pos, pos, guess, periodic, box, 1e-8)))
    if not searched:
        return results  # type: ignore[return-value]

    # one neighbour list of every structure searched, its atoms numbered globally
    atoms = np.array([len(f[0]) for f in found])
    first_atom = np.cumsum(atoms) - atoms
    structure_of_atom = np.repeat(np.arange(len(found)), atoms)
    offset = np.repeat(first_atom, [len(f[2]) for f in found])
    centers = np.concatenate([f[2] for f in found]) + offset
    neighbors = np.concatenate([f[3] for f in found]) + offset
    images = np.concatenate([f[4] for f in found])
    distances = np.concatenate([f[5] for f in found])
    not_self = (centers != neighbors) | images.any(axis=1)
    centers, neighbors = centers[not_self], neighbors[not_self]
    images, distances = images[not_self], distances[not_self]
    # lexsort is stable and the structures' atom ranges are disjoint and increasing, so
    # each structure's pairs come out in the order its own lexsort gives them
    order = np.lexsort((distances, centers))
    centers, neighbors, distances = centers[order], neighbors[order], distances[order]
    images = images[order]

    counts = np.bincount(centers, minlength=len(structure_of_atom))
    enough = np.minimum.reduceat(counts, first_atom) >= max_neighbors
    tied = _boundary_ties(centers, neighbors, distances, counts, max_neighbors)
    usable = enough.copy()
    usable[structure_of_atom[tied]] = False
    rank = np.arange(len(centers)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = (rank < max_neighbors) & usable[structure_of_atom[centers]]
    centers, neighbors, distances = centers[keep], neighbors[keep], distances[keep]
    shifts = images[keep].astype(np.int64)
    all_positions = np.concatenate([f[0] for f in found])
    # the image offsets one structure at a time, as the single search computes them: a
    # product over all pairs may round the last bit otherwise
    bounds = np.cumsum(np.r_[0, np.where(usable, atoms * max_neighbors, 0)])
    offsets = np.empty((len(centers), 3))
    for t, (_, box, *_) in enumerate(found):
        lo, hi = bounds[t], bounds[t + 1]
        if usable[t]:
            offsets[lo:hi] = shifts[lo:hi] @ box
    vectors = all_positions[neighbors] + offsets - all_positions[centers]
    local = first_atom[structure_of_atom[centers]]
    centers, neighbors = centers - local, neighbors - local
    for t, (s, (pos, box, *_)) in enumerate(zip(searched, found, strict=True)):
        lo, hi = bounds[t], bounds[t + 1]
        if usable[t]:
            results[s] = Neighbors(
                centers[lo:hi], neighbors[lo:hi], shifts[lo:hi], distances[lo:hi], vectors[lo:hi]
            )
        else:  # too few within the guess, or a tie at the k-th: the full search decides
            pairs = nearest(_pairs(pos, box, pbc, cutoff), len(pos), max_neighbors)
            results[s] = _with_vectors(pairs, pos, box)
    return results  # type: ignore[return-value]


def _boundary_ties(
    centers: np.ndarray, neighbors: np.ndarray, distances: np.ndarray, counts: np.ndarray, k: int
) -> np.ndarray:
    """The atoms of :func:`_boundary_tie`'s test, for a neighbour list of many
    structures with atoms numbered globally."""
    n_atoms = len(counts)
    starts = np.cumsum(counts) - counts
    atoms = np.flatnonzero(counts > k)
    kth = starts[atoms] + k - 1
    tied = distances[kth] == distances[kth + 1]
    if not tied.any():
        return atoms[:0]
    at_boundary = np.full(n_atoms, -1.0)
    at_boundary[atoms[tied]] = distances[kth[tied]]
    in_group = distances == at_boundary[centers]
    group_centers, group_neighbors = centers[in_group], neighbors[in_group]
    first = np.full(n_atoms, -1)
    first[group_centers[::-1]] = group_neighbors[::-1]
    return group_centers[group_neighbors != first[group_centers]]


def nearest(pairs: Neighbors, n_atoms: int, max_neighbors: int | None) -> Neighbors:
    """Keep the ``max_neighbors`` nearest neighbours of each centre (pairs are sorted)."""
    if max_neighbors is None or len(pairs.centers) == 0:
        return pairs
    counts = np.bincount(pairs.centers, minlength=n_atoms)
    if counts.max() <= max_neighbors:
        return pairs
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    rank = np.arange(len(pairs.centers)) - starts
    return pairs.take(rank < max_neighbors)


@lru_cache(maxsize=64)
def _pair_pattern(degree: int) -> np.ndarray:
    """(2, d(d − 1)) local indices (a, b), a ≠ b, of one centre's d edges, sorted."""
    a, b = np.divmod(np.arange(degree * degree), degree)
    off = a != b
    return np.stack([a[off], b[off]])


def bond_pairs(centers: np.ndarray, n_edges: int, allowed: np.ndarray | None = None) -> np.ndarray:
    """Ordered pairs (a, b), a ≠ b, of edges sharing their centre atom: the line graph.

    ``centers`` must be sorted (edges grouped by centre). ``allowed`` masks the edges that
    may take part. Returns (2, T) edge indices, sorted by a, then b.
    """
    edges = np.arange(n_edges) if allowed is None else np.flatnonzero(allowed)
    m = len(edges)
    if m == 0:
        return np.zeros((2, 0), dtype=np.int64)
    grouped = centers[edges]
    # first position of each centre's run of edges, and the run's length (its degree)
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    degrees = np.diff(np.r_[starts, m])
    if degrees[0] > 1 and np.all(degrees == degrees[0]):
        # every centre has the same degree (k-nearest graphs): one pattern, shifted
        pattern = _pair_pattern(int(degrees[0]))
        local = (starts[None, :, None] + pattern[:, None, :]).reshape(2, -1)
        return local if allowed is None else edges[local]
    first = np.repeat(starts, degrees)  # per position: where its run starts
    partners = np.repeat(degrees - 1, degrees)  # per position: the other edges of its run
    # row a lists the other members of a's run in order: the r-th is r, or r + 1 past a
    a = np.repeat(np.arange(m), partners)
    r = np.arange(len(a)) - np.repeat(np.cumsum(partners) - partners, partners)
    b = first[a] + r + (r >= a - first[a])
    # edges are increasing, so rows (a) and their members (b) come out sorted
    return np.stack([edges[a], edges[b]])
