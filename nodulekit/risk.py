"""The lung-cancer risk-factor table behind the paper's Fig. 3, and what it really says.

The paper's Fig. 3 is a correlation heatmap of the Kaggle "cancer patient data sets" table: Age,
Gender (1/2), 21 ordinal risk factors and symptoms scored 1..9, and Level (Low/Medium/High). This
module

* reads that table with a schema check against the real file's spelling (:func:`load_risk_table`,
  :func:`validate_risk_table`);
* measures how duplicated it is (:func:`duplication_report`, :func:`deduplicate`,
  :func:`factor_groups`): the real copy has 1,000 rows but only 152 distinct rows and 53 distinct
  factor vectors, so any statistic on the raw rows counts the same people many times and any random
  row split leaks;
* generates a synthetic cohort with the same schema from a documented latent-variable model
  (:func:`synthetic_risk_table`), which is what the notebooks use when the real table is absent;
* computes correlations (:func:`correlation`, :func:`strongest_pairs`, :func:`correlation_with_level`)
  and checks the paper's prose claims against the data (:func:`claim_check`).

The loaded form is one DataFrame: ``Patient Id`` (str, when the file has it), ``Age`` and ``Gender``
(int), the 21 factors (int 1..9) in :data:`FACTOR_COLUMNS` spelling, and ``Level`` as an ordered
categorical Low < Medium < High. ``df.attrs["synthetic"]`` says whether the table was generated.

References
----------
.. [1] "Cancer Patient Data Sets", Kaggle (thedevastator). License and collection protocol are not
   documented by its publishers.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import DataFormatError, InvalidParameterError, MissingDataError
from .utils import as_rng

__all__ = [
    "FACTOR_COLUMNS",
    "DEMOGRAPHIC_COLUMNS",
    "LEVEL_COLUMN",
    "LEVELS",
    "ID_COLUMN",
    "VARIABLE_COLUMNS",
    "AGE_RANGE",
    "SCORE_RANGE",
    "SYNTHETIC_LOADINGS",
    "load_risk_table",
    "validate_risk_table",
    "DuplicationReport",
    "duplication_report",
    "deduplicate",
    "factor_groups",
    "synthetic_risk_table",
    "numeric_table",
    "correlation",
    "cluster_order",
    "strongest_pairs",
    "correlation_with_level",
    "Claim",
    "PAPER_CLAIMS",
    "claim_check",
]

logger = logging.getLogger(__name__)

#: The 21 ordinal factors (scored 1..9), spelled exactly as in the Kaggle file.
FACTOR_COLUMNS: tuple[str, ...] = (
    "Air Pollution",
    "Alcohol use",
    "Dust Allergy",
    "OccuPational Hazards",
    "Genetic Risk",
    "chronic Lung Disease",
    "Balanced Diet",
    "Obesity",
    "Smoking",
    "Passive Smoker",
    "Chest Pain",
    "Coughing of Blood",
    "Fatigue",
    "Weight Loss",
    "Shortness of Breath",
    "Wheezing",
    "Swallowing Difficulty",
    "Clubbing of Finger Nails",
    "Frequent Cold",
    "Dry Cough",
    "Snoring",
)
DEMOGRAPHIC_COLUMNS: tuple[str, ...] = ("Age", "Gender")
LEVEL_COLUMN = "Level"
#: Level categories in order; numeric files code them 0, 1, 2.
LEVELS: tuple[str, ...] = ("Low", "Medium", "High")
ID_COLUMN = "Patient Id"
#: Every analysed variable, in file order: Age, Gender, the 21 factors, Level.
VARIABLE_COLUMNS: tuple[str, ...] = (*DEMOGRAPHIC_COLUMNS, *FACTOR_COLUMNS, LEVEL_COLUMN)
#: Accepted ages in years (inclusive); the real table spans 14..73.
AGE_RANGE = (0, 120)
#: Accepted factor scores (inclusive).
SCORE_RANGE = (1, 9)
GENDER_VALUES = (1, 2)

# Column headers an exported row index gets: the Kaggle file's "index", pandas' "Unnamed: 0".
_INDEX_HEADERS = ("index", "unnamed0", "")
_MAX_SHOWN = 5


def _key(name: object) -> str:
    """Normalised header: lower case, letters and digits only ("OccuPational Hazards" → "occupationalhazards")."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


_CANONICAL = {_key(name): name for name in (ID_COLUMN, *VARIABLE_COLUMNS)}


# --------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------
def load_risk_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read the Kaggle "cancer patient data sets" CSV and check its schema.

    Accepted variants: with or without the leading ``index`` column (or pandas' ``Unnamed: 0``),
    with or without ``Patient Id``, ``Level`` as text (Low/Medium/High, any case) or as 0/1/2, and
    headers that differ from the file's spelling only in case, spaces or punctuation
    (``Occupational Hazards``, ``chronic_lung_disease``); these are renamed to :data:`FACTOR_COLUMNS`
    spelling. The duplication figures are logged (see :func:`duplication_report`).

    Parameters
    ----------
    path : str or os.PathLike
        The CSV file.

    Returns
    -------
    pandas.DataFrame
        ``Patient Id`` (when present), ``Age``, ``Gender``, the 21 factors (int) and ``Level``
        (ordered categorical Low < Medium < High); the file's index column, when present, becomes
        the DataFrame index. ``attrs["synthetic"]`` is False and ``attrs["source"]`` the path.

    Raises
    ------
    MissingDataError
        The file does not exist.
    DataFormatError
        The file is not a readable CSV, is empty, lacks or adds columns, has missing values, or has
        values out of range (Age outside :data:`AGE_RANGE`, Gender not 1/2, a factor outside 1..9,
        an unknown Level). The message names the columns, the offending values and their rows.

    References
    ----------
    .. [1] "Cancer Patient Data Sets", Kaggle (thedevastator).

    Examples
    --------
    >>> df = load_risk_table("../shared/data/risk/cancer_patient_data_sets.csv")  # doctest: +SKIP
    >>> duplication_report(df).n_distinct_rows  # doctest: +SKIP
    152
    """
    path = Path(path)
    if not path.is_file():
        raise MissingDataError("risk-factor table not found", path=path)
    try:
        raw = pd.read_csv(path, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise DataFormatError(f"not a readable CSV table ({error})", path=path) from error
    table = validate_risk_table(raw, path=path)
    table.attrs["source"] = str(path)
    report = duplication_report(table)
    if report.n_distinct_rows < report.n_rows:
        logger.warning("%s: %s", path, report)
    return table


def validate_risk_table(df: pd.DataFrame, *, path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Check a risk-factor DataFrame and return it in the canonical form of :func:`load_risk_table`.

    Parameters
    ----------
    df : pandas.DataFrame
        A table as read from a CSV (see :func:`load_risk_table` for the accepted variants).
    path : str or os.PathLike, optional
        Where the table came from; put in front of error messages.

    Returns
    -------
    pandas.DataFrame
        A new DataFrame in canonical form (the input is not modified).

    Raises
    ------
    DataFormatError
        Missing, unexpected or duplicated columns, missing values, or values out of range.
    """
    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError(f"expected a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise DataFormatError("the table has no rows", path=path)
    df = _rename_columns(df, path=path)
    index_column = next((c for c in df.columns if _key(c) in _INDEX_HEADERS), None)

    problems = []
    out = {}
    if ID_COLUMN in df.columns:
        out[ID_COLUMN] = df[ID_COLUMN].astype(str)
    for column, (low, high) in (("Age", AGE_RANGE), *((c, SCORE_RANGE) for c in FACTOR_COLUMNS)):
        values, problem = _integer_column(df[column], low=low, high=high)
        out[column] = values
        problems += [f"{column!r}: {problem}"] if problem else []
    gender, problem = _integer_column(df["Gender"], allowed=GENDER_VALUES)
    out["Gender"] = gender
    problems += [f"'Gender': {problem}"] if problem else []
    level, problem = _level_column(df[LEVEL_COLUMN])
    out[LEVEL_COLUMN] = level
    problems += [f"'Level': {problem}"] if problem else []
    if problems:
        raise DataFormatError("; ".join(problems), path=path)

    columns = ([ID_COLUMN] if ID_COLUMN in out else []) + list(VARIABLE_COLUMNS)
    table = pd.DataFrame({name: out[name] for name in columns})
    if index_column is not None:
        table.index = pd.Index(df[index_column].to_numpy(), name="index")
    else:
        table.index = pd.RangeIndex(len(table))
    table.attrs["synthetic"] = False
    return table


def _rename_columns(df: pd.DataFrame, *, path) -> pd.DataFrame:
    """Map headers to the canonical spelling; raise naming missing, unexpected and clashing columns."""
    renames, unexpected, seen = {}, [], {}
    for column in df.columns:
        key = _key(column)
        if key in _INDEX_HEADERS:
            continue
        if key not in _CANONICAL:
            unexpected.append(str(column))
            continue
        canonical = _CANONICAL[key]
        seen.setdefault(canonical, []).append(str(column))
        if column != canonical:
            renames[column] = canonical
    clashes = {name: found for name, found in seen.items() if len(found) > 1}
    missing = [name for name in VARIABLE_COLUMNS if name not in seen]
    index_headers = [c for c in df.columns if _key(c) in _INDEX_HEADERS]
    messages = []
    if missing:
        messages.append("missing columns " + ", ".join(map(repr, missing)))
    if unexpected:
        messages.append("unexpected columns " + ", ".join(map(repr, unexpected)))
    if clashes:
        messages.append(
            "columns that mean the same variable "
            + "; ".join(f"{found} for {name!r}" for name, found in clashes.items())
        )
    if len(index_headers) > 1:
        messages.append(f"more than one index column {index_headers}")
    if messages:
        expected = ", ".join(map(repr, ("[index]", f"[{ID_COLUMN}]", *VARIABLE_COLUMNS)))
        raise DataFormatError("; ".join(messages) + f" (expected the columns {expected})", path=path)
    if renames:
        logger.info("%s: renamed columns %s", path or "risk table", renames)
    return df.rename(columns=renames)


def _rows(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r) for r in rows[:_MAX_SHOWN])
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}{', ...' if len(rows) > _MAX_SHOWN else ''}"


def _values(series: pd.Series) -> str:
    unique = pd.unique(series)
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in unique[:_MAX_SHOWN])
    return shown + (", ..." if len(unique) > _MAX_SHOWN else "")


def _integer_column(series: pd.Series, *, low=None, high=None, allowed=None) -> tuple[pd.Series, str | None]:
    """Integers in [low, high] (or in ``allowed``); returns (int64 values, problem or None).

    Rows in messages are 0-based data rows (file line = row + 2).
    """
    numbers = pd.to_numeric(series, errors="coerce")
    missing = series.isna().to_numpy()
    if missing.any():
        return series, f"{missing.sum()} missing value(s) at {_rows(missing)}"
    not_number = numbers.isna().to_numpy()
    if not_number.any():
        return series, f"non-numeric value(s) {_values(series[not_number])} at {_rows(not_number)}"
    values = numbers.to_numpy(dtype=float)
    fractional = values != np.round(values)
    if fractional.any():
        return series, f"non-integer value(s) {_values(series[fractional])} at {_rows(fractional)}"
    if allowed is not None:
        bad = ~np.isin(values, allowed)
        expected = "one of " + "/".join(map(str, allowed))
    else:
        bad = (values < low) | (values > high)
        expected = f"in {low}..{high}"
    if bad.any():
        return series, f"value(s) {_values(series[bad])} out of range (expected {expected}) at {_rows(bad)}"
    return pd.Series(values.astype(np.int64), index=series.index), None


def _level_column(series: pd.Series) -> tuple[pd.Series, str | None]:
    """Level as text (Low/Medium/High, any case) or codes 0/1/2 → ordered categorical."""
    missing = series.isna().to_numpy()
    if missing.any():
        return series, f"{missing.sum()} missing value(s) at {_rows(missing)}"
    lookup = {level.lower(): code for code, level in enumerate(LEVELS)}
    lookup.update({str(code): code for code in range(len(LEVELS))})
    lookup.update({f"{code}.0": code for code in range(len(LEVELS))})
    codes = series.map(lambda value: lookup.get(str(value).strip().lower(), -1)).to_numpy(dtype=np.int64)
    bad = codes < 0
    if bad.any():
        return series, (
            f"unknown value(s) {_values(series[bad])} at {_rows(bad)} "
            f"(expected {'/'.join(LEVELS)} or 0/1/2)"
        )
    level = pd.Categorical.from_codes(codes, categories=list(LEVELS), ordered=True)
    return pd.Series(level, index=series.index), None


# --------------------------------------------------------------------------------------------------
# Duplication
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DuplicationReport:
    """How many of a risk table's rows are copies.

    Attributes
    ----------
    n_rows : int
        Rows in the table.
    n_distinct_rows : int
        Distinct rows over Age, Gender, the 21 factors and Level (``Patient Id`` and the index are
        ignored: every row of the Kaggle file has its own).
    n_distinct_factor_vectors : int
        Distinct vectors of the 21 factors alone.
    n_vectors_with_several_levels : int
        Factor vectors that occur with more than one Level (0 means Level is a function of them).
    max_copies_of_a_vector : int
        Rows that share the most common factor vector.
    """

    n_rows: int
    n_distinct_rows: int
    n_distinct_factor_vectors: int
    n_vectors_with_several_levels: int
    max_copies_of_a_vector: int

    def as_dict(self) -> dict[str, int]:
        """The figures as a plain dict (for JSON)."""
        return asdict(self)

    def __str__(self) -> str:
        levels = (
            "each vector has one Level"
            if self.n_vectors_with_several_levels == 0
            else f"{self.n_vectors_with_several_levels} vectors occur with several Levels"
        )
        text = (
            f"{self.n_rows} rows, {self.n_distinct_rows} distinct rows, "
            f"{self.n_distinct_factor_vectors} distinct factor vectors"
        )
        if self.n_distinct_factor_vectors == self.n_rows:
            return text + " (no duplicates)"
        return text + (
            f" (up to {self.max_copies_of_a_vector} rows share one; {levels}); "
            "statistics on the raw rows count the same records many times: use deduplicate() "
            "or group splits by factor_groups()"
        )


def duplication_report(df: pd.DataFrame) -> DuplicationReport:
    """Count distinct rows and distinct factor vectors of a risk table.

    Parameters
    ----------
    df : pandas.DataFrame
        A table in the form of :func:`load_risk_table` or :func:`synthetic_risk_table`.

    Returns
    -------
    DuplicationReport
        On the real Kaggle table: 1000 rows, 152 distinct rows, 53 distinct factor vectors, each
        with one Level.
    """
    _require_columns(df, VARIABLE_COLUMNS)
    groups = factor_groups(df)
    levels_per_vector = df[LEVEL_COLUMN].groupby(groups.to_numpy(), observed=True).nunique()
    return DuplicationReport(
        n_rows=len(df),
        n_distinct_rows=len(df[list(VARIABLE_COLUMNS)].drop_duplicates()),
        n_distinct_factor_vectors=int(groups.nunique()),
        n_vectors_with_several_levels=int((levels_per_vector > 1).sum()),
        max_copies_of_a_vector=int(groups.value_counts().max()) if len(df) else 0,
    )


def deduplicate(df: pd.DataFrame, *, by: str = "rows") -> pd.DataFrame:
    """Keep one row per distinct record.

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.
    by : {"rows", "factors"}
        ``"rows"``: one row per distinct (Age, Gender, factors, Level); ``"factors"``: one row per
        distinct vector of the 21 factors (its first row's Age, Gender and Level are kept; a warning
        is logged when a vector occurs with several Levels).

    Returns
    -------
    pandas.DataFrame
        The first row of each group, in original order, with ``attrs`` kept.

    Raises
    ------
    InvalidParameterError
        ``by`` is not "rows" or "factors".
    """
    if by == "rows":
        subset = list(VARIABLE_COLUMNS)
    elif by == "factors":
        subset = list(FACTOR_COLUMNS)
        if duplication_report(df).n_vectors_with_several_levels:
            logger.warning("some factor vectors occur with several Levels; keeping the first row's Level")
    else:
        raise InvalidParameterError(f"by must be 'rows' or 'factors', got {by!r}")
    _require_columns(df, subset)
    out = df.drop_duplicates(subset=subset, keep="first")
    out.attrs = dict(df.attrs)
    return out


def factor_groups(df: pd.DataFrame) -> pd.Series:
    """Integer id of each row's factor vector (0, 1, ... in order of first appearance).

    Use it as ``groups=`` for scikit-learn's ``GroupKFold`` / ``GroupShuffleSplit`` so that copies
    of one record never sit on both sides of a split.

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.

    Returns
    -------
    pandas.Series
        int64, aligned with ``df.index``.
    """
    _require_columns(df, FACTOR_COLUMNS)
    codes, _ = pd.factorize(pd.MultiIndex.from_frame(df[list(FACTOR_COLUMNS)]))
    return pd.Series(codes.astype(np.int64), index=df.index, name="factor_group")


# --------------------------------------------------------------------------------------------------
# Synthetic cohort
# --------------------------------------------------------------------------------------------------
#: Loadings of each factor on the latent variables of :func:`synthetic_risk_table` (rows: factors;
#: columns: ``exposure``, ``lifestyle``, ``genetic``, ``disease``). Each row explains less than all of
#: its factor's unit variance (see :func:`synthetic_risk_table`); the rest is independent noise.
SYNTHETIC_LOADINGS = pd.DataFrame(
    {
        #                          exposure lifestyle genetic disease
        "Air Pollution":            (0.75, 0.00, 0.00, 0.25),
        "Alcohol use":              (0.00, 0.70, 0.00, 0.20),
        "Dust Allergy":             (0.60, 0.00, 0.20, 0.20),
        "OccuPational Hazards":     (0.75, 0.00, 0.00, 0.25),
        "Genetic Risk":             (0.00, 0.00, 0.85, 0.20),
        "chronic Lung Disease":     (0.45, 0.20, 0.30, 0.30),
        "Balanced Diet":            (0.00, 0.65, 0.00, 0.20),
        "Obesity":                  (0.00, 0.60, 0.20, 0.25),
        "Smoking":                  (0.00, 0.80, 0.00, 0.25),
        "Passive Smoker":           (0.35, 0.50, 0.00, 0.20),
        "Chest Pain":               (0.00, 0.00, 0.00, 0.75),
        "Coughing of Blood":        (0.00, 0.00, 0.00, 0.80),
        "Fatigue":                  (0.00, 0.00, 0.00, 0.65),
        "Weight Loss":              (0.00, 0.00, 0.00, 0.55),
        "Shortness of Breath":      (0.15, 0.00, 0.00, 0.60),
        "Wheezing":                 (0.15, 0.00, 0.00, 0.45),
        "Swallowing Difficulty":    (0.00, 0.00, 0.00, 0.45),
        "Clubbing of Finger Nails": (0.00, 0.00, 0.00, 0.45),
        "Frequent Cold":            (0.20, 0.00, 0.00, 0.40),
        "Dry Cough":                (0.00, 0.15, 0.00, 0.55),
        "Snoring":                  (0.00, 0.20, 0.00, 0.30),
    },
    index=["exposure", "lifestyle", "genetic", "disease"],
).T
# How the latent disease severity depends on the three causes (the rest is independent noise).
_DISEASE_WEIGHTS = {"exposure": 0.45, "lifestyle": 0.45, "genetic": 0.35}
# Level = Low / Medium / High for disease below / between / above these standard-normal quantiles
# (30 %, 34 %, 36 % of the cohort, close to the real table's 303/332/365).
_LEVEL_QUANTILES = (0.30, 0.64)
_SCORE_CENTRE, _SCORE_SPREAD = 4.3, 2.1  # ≈ mean and sd of the real factor scores
_AGE_CENTRE, _AGE_SPREAD, _AGE_ON_DISEASE = 37.0, 12.0, 0.15
_FEMALE_FRACTION, _FEMALE_LIFESTYLE_SHIFT = 0.4, -0.4


def synthetic_risk_table(n: int = 1000, *, seed: int | np.random.Generator | None = 0) -> pd.DataFrame:
    """Generate a risk-factor cohort with the schema of the Kaggle table from a latent-variable model.

    The generative model (all latent variables standard normal):

    1. ``Gender`` is 2 with probability 0.4, else 1. Three independent causes are drawn:
       ``exposure`` (air, dust, occupation), ``lifestyle`` (smoking, alcohol, diet, weight; shifted
       by -0.4 for Gender 2, then re-standardised) and ``genetic``.
    2. Disease severity ``disease = 0.45 exposure + 0.45 lifestyle + 0.35 genetic + noise``, scaled
       to unit variance.
    3. Each of the 21 factors is ``z = L · latents + sqrt(1 - Var(L · latents)) · noise`` with its row
       ``L`` of :data:`SYNTHETIC_LOADINGS` (so ``z`` has unit variance), then scored
       ``clip(round(4.3 + 2.1 z), 1, 9)``. Every factor is scored so that higher means more risk
       (as in the real table, where all 21 correlate positively with Level); symptoms load mainly
       on ``disease``, exposures and habits on their cause and a little on ``disease``.
    4. ``Level`` is Low / Medium / High for ``disease`` below the 30 % / between the 30 % and 64 % /
       above the 64 % standard-normal quantiles; ``Age = clip(round(37 + 12 (0.15 disease +
       0.99 noise)), 14, 73)``.

    Unlike the Kaggle table the rows are (almost surely) all distinct.

    Parameters
    ----------
    n : int
        Number of patients (≥ 1).
    seed : int, numpy.random.Generator or None
        Randomness; the same int gives the same table.

    Returns
    -------
    pandas.DataFrame
        ``Patient Id`` ("S1", "S2", ...), Age, Gender, the 21 factors and Level in the form of
        :func:`load_risk_table`, with ``attrs["synthetic"] = True``.

    Raises
    ------
    InvalidParameterError
        ``n`` is not a positive integer.
    """
    from scipy.stats import norm

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise InvalidParameterError(f"n must be a positive integer, got {n!r}")
    rng = as_rng(seed)
    gender = np.where(rng.random(n) < _FEMALE_FRACTION, 2, 1)
    latents = {
        "exposure": rng.standard_normal(n),
        "lifestyle": _standardise(rng.standard_normal(n) + _FEMALE_LIFESTYLE_SHIFT * (gender == 2)),
        "genetic": rng.standard_normal(n),
    }
    causes = sum(weight * latents[name] for name, weight in _DISEASE_WEIGHTS.items())
    noise_sd = np.sqrt(max(1.0 - sum(w**2 for w in _DISEASE_WEIGHTS.values()), 0.0))
    latents["disease"] = _standardise(causes + noise_sd * rng.standard_normal(n))

    columns: dict[str, np.ndarray] = {ID_COLUMN: np.array([f"S{i + 1}" for i in range(n)])}
    age = _AGE_CENTRE + _AGE_SPREAD * (
        _AGE_ON_DISEASE * latents["disease"] + np.sqrt(1 - _AGE_ON_DISEASE**2) * rng.standard_normal(n)
    )
    columns["Age"] = np.clip(np.round(age), 14, 73).astype(np.int64)
    columns["Gender"] = gender.astype(np.int64)
    latent_covariance = _latent_covariance()
    for factor in FACTOR_COLUMNS:
        loadings = SYNTHETIC_LOADINGS.loc[factor].to_numpy()
        signal = sum(weight * latents[name] for name, weight in zip(SYNTHETIC_LOADINGS.columns, loadings))
        residual = np.sqrt(max(1.0 - float(loadings @ latent_covariance @ loadings), 0.0))
        z = signal + residual * rng.standard_normal(n)
        columns[factor] = np.clip(np.round(_SCORE_CENTRE + _SCORE_SPREAD * z), *SCORE_RANGE).astype(np.int64)
    codes = np.searchsorted(norm.ppf(_LEVEL_QUANTILES), latents["disease"])
    columns[LEVEL_COLUMN] = pd.Categorical.from_codes(codes, categories=list(LEVELS), ordered=True)

    table = pd.DataFrame(columns)
    table.attrs["synthetic"] = True
    seed_text = "Generator" if isinstance(seed, np.random.Generator) else repr(seed)
    table.attrs["source"] = f"synthetic_risk_table(n={n}, seed={seed_text})"
    return table


def _latent_covariance() -> np.ndarray:
    """Covariance of (exposure, lifestyle, genetic, disease): three independent unit causes, and
    disease correlated with each by its weight in ``_DISEASE_WEIGHTS``."""
    covariance = np.eye(len(SYNTHETIC_LOADINGS.columns))
    for i, name in enumerate(SYNTHETIC_LOADINGS.columns[:-1]):
        covariance[i, -1] = covariance[-1, i] = _DISEASE_WEIGHTS[name]
    return covariance


def _standardise(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / (spread if spread > 0 else 1.0)


# --------------------------------------------------------------------------------------------------
# Correlations and the paper's claims
# --------------------------------------------------------------------------------------------------
_METHODS = ("pearson", "spearman")


def numeric_table(df: pd.DataFrame) -> pd.DataFrame:
    """The analysed variables as floats, Level coded Low=0, Medium=1, High=2.

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`VARIABLE_COLUMNS`, float64.
    """
    _require_columns(df, VARIABLE_COLUMNS)
    out = df[list(VARIABLE_COLUMNS)].copy()
    level = out[LEVEL_COLUMN]
    if not (isinstance(level.dtype, pd.CategoricalDtype) and list(level.cat.categories) == list(LEVELS)):
        level, problem = _level_column(level)
        if problem:
            raise InvalidParameterError(f"Level: {problem}")
    out[LEVEL_COLUMN] = level.cat.codes.where(level.notna())
    try:
        return out.astype(float)
    except (TypeError, ValueError) as error:
        raise InvalidParameterError(
            f"risk table has non-numeric values ({error}); load it with load_risk_table()"
        ) from error


def correlation(df: pd.DataFrame, *, method: str = "pearson") -> pd.DataFrame:
    """Correlation matrix of Age, Gender, the 21 factors and Level (coded 0/1/2).

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.
    method : {"pearson", "spearman"}
        Pearson's r or Spearman's rank correlation.

    Returns
    -------
    pandas.DataFrame
        Square, indexed and labelled by :data:`VARIABLE_COLUMNS` (NaN for a constant variable).
        ``attrs`` carries ``method`` and ``synthetic``.

    Raises
    ------
    InvalidParameterError
        Unknown ``method``.
    """
    _check_method(method)
    matrix = numeric_table(df).corr(method=method)
    matrix.attrs = {"method": method, "synthetic": bool(df.attrs.get("synthetic", False))}
    return matrix


def cluster_order(corr: pd.DataFrame, *, method: str = "average") -> list[str]:
    """Order variables so that strongly correlated ones sit together (hierarchical clustering).

    Distances are ``1 - r`` (a NaN correlation counts as 0), clustered with
    :func:`scipy.cluster.hierarchy.linkage` and leaves put in optimal order.

    Parameters
    ----------
    corr : pandas.DataFrame
        A square correlation matrix (e.g. from :func:`correlation`).
    method : str
        Linkage method for :func:`scipy.cluster.hierarchy.linkage`.

    Returns
    -------
    list of str
        The variable names in dendrogram-leaf order.
    """
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if corr.shape[0] != corr.shape[1] or list(corr.index) != list(corr.columns):
        raise InvalidParameterError("corr must be a square matrix with the same row and column labels")
    names = list(corr.columns)
    if len(names) < 3:
        return names
    values = np.nan_to_num(corr.to_numpy(dtype=float), nan=0.0)
    distance = np.clip(1.0 - (values + values.T) / 2, 0.0, 2.0)
    np.fill_diagonal(distance, 0.0)
    tree = linkage(squareform(distance, checks=False), method=method, optimal_ordering=True)
    return [names[i] for i in leaves_list(tree)]


def strongest_pairs(
    df: pd.DataFrame, n: int = 10, *, method: str = "pearson", include_level: bool = False
) -> pd.DataFrame:
    """The ``n`` strongest positive and ``n`` strongest negative correlations between variables.

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.
    n : int
        Pairs per direction (fewer when fewer pairs have that sign).
    method : {"pearson", "spearman"}
    include_level : bool
        Also list pairs with Level (see :func:`correlation_with_level` for those alone).

    Returns
    -------
    pandas.DataFrame
        Columns ``direction`` ("positive"/"negative"), ``variable_1``, ``variable_2``, ``r``;
        positive pairs by decreasing r, then negative pairs by increasing r.
    """
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise InvalidParameterError(f"n must be a positive integer, got {n!r}")
    matrix = correlation(df, method=method)
    if not include_level:
        matrix = matrix.drop(index=LEVEL_COLUMN, columns=LEVEL_COLUMN)
    names = list(matrix.columns)
    first, second = np.triu_indices(len(names), k=1)
    pairs = pd.DataFrame(
        {
            "variable_1": [names[i] for i in first],
            "variable_2": [names[j] for j in second],
            "r": matrix.to_numpy()[first, second],
        }
    ).dropna(subset=["r"])
    positive = pairs[pairs["r"] > 0].sort_values("r", ascending=False).head(n)
    negative = pairs[pairs["r"] < 0].sort_values("r", ascending=True).head(n)
    table = pd.concat(
        [positive.assign(direction="positive"), negative.assign(direction="negative")], ignore_index=True
    )
    return table[["direction", "variable_1", "variable_2", "r"]]


def correlation_with_level(df: pd.DataFrame, *, method: str = "pearson") -> pd.DataFrame:
    """Each variable's correlation with Level (Low=0, Medium=1, High=2), strongest first.

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.
    method : {"pearson", "spearman"}

    Returns
    -------
    pandas.DataFrame
        Columns ``variable`` and ``r``, sorted by decreasing r.
    """
    matrix = correlation(df, method=method)
    series = matrix[LEVEL_COLUMN].drop(LEVEL_COLUMN).sort_values(ascending=False)
    return pd.DataFrame({"variable": series.index, "r": series.to_numpy()})


@dataclass(frozen=True)
class Claim:
    """A statement about one correlation, checkable against data.

    Attributes
    ----------
    text : str
        The claim in words.
    variable_1, variable_2 : str
        The two variables (in :data:`VARIABLE_COLUMNS` spelling).
    expected : {"near_one", "positive", "negative"}
        What the claim says about r: ``near_one`` is supported when r ≥ 0.9 and called "weaker than
        claimed" for 0 < r < 0.9; ``positive``/``negative`` are supported when r is beyond ±0.1 in
        that direction, "no clear correlation" within ±0.1, and contradicted beyond 0.1 the other way.
    """

    text: str
    variable_1: str
    variable_2: str
    expected: str


#: The correlation claims of the paper's prose about Fig. 3.
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "Air Pollution correlates near 1 with Occupational Hazards",
        "Air Pollution",
        "OccuPational Hazards",
        "near_one",
    ),
    Claim(
        "Air Pollution correlates near 1 with Chronic Lung Disease",
        "Air Pollution",
        "chronic Lung Disease",
        "near_one",
    ),
    Claim("Balanced Diet correlates negatively with Smoking", "Balanced Diet", "Smoking", "negative"),
    Claim("Balanced Diet correlates negatively with Chest Pain", "Balanced Diet", "Chest Pain", "negative"),
)
_NEAR_ONE, _CLEAR = 0.9, 0.1


def claim_check(
    df: pd.DataFrame, claims: Sequence[Claim] = PAPER_CLAIMS, *, method: str = "pearson"
) -> pd.DataFrame:
    """Check correlation claims against a risk table.

    Parameters
    ----------
    df : pandas.DataFrame
        A risk table.
    claims : sequence of Claim
        What to check; by default the paper's prose claims (:data:`PAPER_CLAIMS`).
    method : {"pearson", "spearman"}

    Returns
    -------
    pandas.DataFrame
        One row per claim: ``claim``, ``variable_1``, ``variable_2``, ``expected``, ``r`` (all rows),
        ``r_distinct`` (on :func:`deduplicate` ``(by="rows")``, which shows whether duplication drives
        the value) and ``verdict`` ("supported", "weaker than claimed", "no clear correlation" or
        "contradicted", judged on ``r``).

    Raises
    ------
    InvalidParameterError
        A claim names an unknown variable or expectation.

    References
    ----------
    .. [1] The paper's Fig. 3 prose (see PAPER.md): Air Pollution ≈ 1 with Occupational Hazards and
       Chronic Lung Disease; Balanced Diet negative with Smoking and Chest Pain.
    """
    matrix = correlation(df, method=method)
    distinct = correlation(deduplicate(df, by="rows"), method=method)
    rows = []
    for claim in claims:
        for name in (claim.variable_1, claim.variable_2):
            if name not in matrix.columns:
                raise InvalidParameterError(f"claim {claim.text!r} names unknown variable {name!r}")
        r = float(matrix.loc[claim.variable_1, claim.variable_2])
        rows.append(
            {
                "claim": claim.text,
                "variable_1": claim.variable_1,
                "variable_2": claim.variable_2,
                "expected": claim.expected,
                "r": r,
                "r_distinct": float(distinct.loc[claim.variable_1, claim.variable_2]),
                "verdict": _verdict(r, claim.expected),
            }
        )
    return pd.DataFrame(rows, columns=["claim", "variable_1", "variable_2", "expected", "r", "r_distinct", "verdict"])


def _verdict(r: float, expected: str) -> str:
    if np.isnan(r):
        return "undefined (constant variable)"
    if expected == "near_one":
        return "supported" if r >= _NEAR_ONE else ("weaker than claimed" if r > 0 else "contradicted")
    if expected in ("positive", "negative"):
        signed = r if expected == "positive" else -r
        return "supported" if signed > _CLEAR else ("contradicted" if signed < -_CLEAR else "no clear correlation")
    raise InvalidParameterError(f"claim expectation must be 'near_one', 'positive' or 'negative', got {expected!r}")


def _check_method(method: str) -> None:
    if method not in _METHODS:
        raise InvalidParameterError(f"method must be one of {_METHODS}, got {method!r}")


def _require_columns(df: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(df, pd.DataFrame):
        raise InvalidParameterError(f"expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidParameterError(
            f"table lacks columns {missing}; load it with load_risk_table() or make it with synthetic_risk_table()"
        )
