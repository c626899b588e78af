"""Paired comparison of two methods over subjects: Wilcoxon signed-rank test with effect size."""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: significance level below which :func:`paired_test` names a better method
ALPHA = 0.05


def paired_test(values_a: Sequence[float], values_b: Sequence[float], higher_is_better: bool = True,
                names: Sequence[str] = ("A", "B"), alpha: float = ALPHA) -> dict:
    """Wilcoxon signed-rank test of paired values of two methods (:func:`scipy.stats.wilcoxon`,
    two-sided, zero differences dropped, scipy's default exact / normal method).

    Pairs with a NaN are dropped; a pair where both values are equal (``inf`` included) counts as
    a zero difference.

    Args:
        values_a, values_b: one value per subject, same order.
        higher_is_better: ``True`` for Dice, ``False`` for distances and errors.
        names: the two methods' names, used in ``"better"``.
        alpha: significance level: a method is named better only when ``p_value < alpha``.

    Returns:
        ``{"n", "median_a", "median_b", "median_difference", "better", "statistic", "p_value",
        "note"}``: ``n`` the pairs used; ``median_difference`` the median of ``a - b``;
        ``better`` the name of the method favoured by the median difference when the test is
        significant (else ``None``, the note says which way the median leaned and why no
        winner: too few subjects, p too high); when every difference is zero, statistic 0.0
        and p-value 1.0 with a note (no test needed), and with no pairs, NaNs.

    Raises:
        ValueError: the two sequences have different lengths.
    """
    a, b = np.asarray(values_a, dtype=float).ravel(), np.asarray(values_b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same length; got {a.size} and {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    out = {"n": int(a.size), "median_a": _median(a), "median_b": _median(b), "median_difference": float("nan"),
           "better": None, "statistic": float("nan"), "p_value": float("nan"), "note": ""}
    if a.size == 0:
        out["note"] = "no pairs"
        return out
    with np.errstate(invalid="ignore"):
        d = np.where(a == b, 0.0, a - b)
    med = float(np.median(d))
    out["median_difference"] = med
    if med != 0 and not math.isnan(med):
        out["better"] = names[0] if (med > 0) == higher_is_better else names[1]
    if not np.any(d != 0):
        out.update(statistic=0.0, p_value=1.0, note="all differences are zero")
        return out
    from scipy import stats  # imported here: keeps `synthseg --help` quick

    res = stats.wilcoxon(d)
    out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    if out["better"] is None:
        out["note"] = "median difference is zero"
    elif not out["p_value"] < alpha:
        out["note"] = (f"not significant (p = {out['p_value']:.3g} >= {alpha:g}"
                       f"{'; too few subjects for any test to be' if np.count_nonzero(d) < 6 else ''}); "
                       f"the median favours {out['better']}")
        out["better"] = None
    return out


def _median(v: np.ndarray) -> float:
    return float(np.median(v)) if v.size else float("nan")
