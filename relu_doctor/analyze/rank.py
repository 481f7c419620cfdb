"""Effective rank of a site: how many directions its features really use.

``exp(H)``, with ``H`` the entropy of the singular values of the ``(samples, units)`` feature
matrix normalised to sum to 1 (Roy & Vetterli, 2007): ``units`` when every direction carries
the same weight, 1 when the features lie on one line, 0 when every feature is 0. The matrix
is the site's row sample (at most 1024 rows, see ``scanner/reservoir.py``), not centred.
"""

from __future__ import annotations

import numpy as np

#: Eigenvalues of the Gram matrix below this share of the largest are rounding noise.
_NOISE = 1e-13


def singular_values(rows: np.ndarray) -> np.ndarray:
    """Singular values of ``rows``, from the eigenvalues of the smaller Gram matrix in float64:
    one matrix product and a symmetric eigensolver, many times cheaper than an SVD of a
    1024 x 2048 sample, and equal to it to ~1e-8 of the largest singular value."""
    x = np.asarray(rows, dtype=np.float64)
    gram = x @ x.T if x.shape[0] <= x.shape[1] else x.T @ x
    eig = np.linalg.eigvalsh(gram)
    top = float(eig.max()) if eig.size else 0.0
    eig = np.where(eig > _NOISE * top, eig, 0.0)
    return np.sqrt(eig)[::-1]


def effective_rank(rows: np.ndarray | None) -> float | None:
    """``exp(entropy of normalised singular values)`` of the finite rows (None without any)."""
    if rows is None:
        return None
    rows = rows[np.isfinite(rows).all(axis=1)] if rows.size else rows
    if rows.shape[0] == 0 or rows.shape[1] == 0:
        return None
    s = singular_values(rows)
    total = float(s.sum())
    if total == 0.0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))
