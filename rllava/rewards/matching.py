"""Minimum-cost assignment (the Hungarian method, O(n^2 m)) for matching predicted to true boxes."""
from __future__ import annotations


def hungarian(cost: list[list[float]]) -> list[tuple[int, int]]:
    """Pairs (row, col) of a minimum-total-cost matching that covers min(rows, cols) of them.

    Shortest augmenting paths with row/column potentials (Kuhn-Munkres); a rectangular
    matrix is handled by transposing so that rows <= columns.
    """
    n = len(cost)
    m = len(cost[0]) if n else 0
    if n == 0 or m == 0:
        return []
    if n > m:
        return [(r, c) for c, r in hungarian([list(col) for col in zip(*cost)])]
    inf = float("inf")
    u = [0.0] * (n + 1)  # row potentials (1-based; index 0 is the virtual start)
    v = [0.0] * (m + 1)  # column potentials
    match = [0] * (m + 1)  # match[col] = row assigned to col (0 = free)
    way = [0] * (m + 1)
    for row in range(1, n + 1):
        match[0] = row
        col0 = 0
        minv = [inf] * (m + 1)
        used = [False] * (m + 1)
        while True:  # grow the alternating tree until a free column is reached
            used[col0] = True
            r0 = match[col0]
            delta, col1 = inf, 0
            for col in range(1, m + 1):
                if used[col]:
                    continue
                reduced = cost[r0 - 1][col - 1] - u[r0] - v[col]
                if reduced < minv[col]:
                    minv[col], way[col] = reduced, col0
                if minv[col] < delta:
                    delta, col1 = minv[col], col
            for col in range(m + 1):
                if used[col]:
                    u[match[col]] += delta
                    v[col] -= delta
                else:
                    minv[col] -= delta
            col0 = col1
            if match[col0] == 0:
                break
        while col0:  # flip the augmenting path
            col1 = way[col0]
            match[col0] = match[col1]
            col0 = col1
    return sorted((match[col] - 1, col - 1) for col in range(1, m + 1) if match[col])
