"""Risk-factor table: loader schema, duplication, correlations, the paper's claims, synthetic cohort, heatmap."""

from __future__ import annotations

import csv

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nodulekit.errors import DataFormatError, InvalidParameterError, MissingDataError
from nodulekit.plots.risk import plot_risk_heatmap
from nodulekit.risk import (
    FACTOR_COLUMNS,
    ID_COLUMN,
    LEVELS,
    VARIABLE_COLUMNS,
    Claim,
    claim_check,
    cluster_order,
    correlation,
    correlation_with_level,
    deduplicate,
    duplication_report,
    factor_groups,
    load_risk_table,
    strongest_pairs,
    synthetic_risk_table,
)

LEVEL_CODES = {"Low": 0, "Medium": 1, "High": 2}


def _raw_columns(path) -> dict[str, np.ndarray]:
    """Read the CSV with the csv module (independently of nodulekit and pandas) as float columns."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    out = {}
    for name in VARIABLE_COLUMNS:
        values = [row[name] for row in rows]
        out[name] = np.array([LEVEL_CODES[v] for v in values] if name == "Level" else values, dtype=float)
    return out


@pytest.fixture(scope="module")
def real(risk_csv):
    return load_risk_table(risk_csv)


@pytest.fixture(scope="module")
def raw(risk_csv):
    return _raw_columns(risk_csv)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------- real table
@pytest.mark.realdata
def test_real_table_loads_in_canonical_form(real):
    assert real.shape == (1000, 25)
    assert list(real.columns) == [ID_COLUMN, *VARIABLE_COLUMNS]
    assert "OccuPational Hazards" in real.columns and "chronic Lung Disease" in real.columns
    assert list(real.index[:3]) == [0, 1, 2] and real.index[-1] == 999
    assert real[ID_COLUMN].iloc[0] == "P1"
    assert real["Level"].cat.ordered and list(real["Level"].cat.categories) == list(LEVELS)
    assert real["Level"].value_counts().to_dict() == {"High": 365, "Medium": 332, "Low": 303}
    assert (real["Age"].min(), real["Age"].max()) == (14, 73)
    assert all(real[c].dtype == np.int64 for c in VARIABLE_COLUMNS[:-1])
    assert real.attrs["synthetic"] is False


@pytest.mark.realdata
def test_real_table_duplication_figures(real, raw):
    report = duplication_report(real)
    assert (report.n_rows, report.n_distinct_rows, report.n_distinct_factor_vectors) == (1000, 152, 53)
    assert report.n_vectors_with_several_levels == 0
    # independent count: distinct tuples of the raw csv columns
    rows = set(zip(*(raw[c] for c in VARIABLE_COLUMNS)))
    vectors = list(zip(*(raw[c] for c in FACTOR_COLUMNS)))
    assert len(rows) == 152 and len(set(vectors)) == 53
    assert report.max_copies_of_a_vector == max(vectors.count(v) for v in set(vectors))
    assert len(deduplicate(real, by="rows")) == 152
    by_factors = deduplicate(real, by="factors")
    assert len(by_factors) == 53 and by_factors.attrs["synthetic"] is False
    groups = factor_groups(real)
    assert groups.nunique() == 53 and groups.iloc[0] == 0
    assert real.groupby(groups)["Level"].nunique().max() == 1
    assert "152 distinct rows" in str(report)


@pytest.mark.realdata
def test_real_correlations_match_independent_computation(real, raw):
    pearson = correlation(real)
    spearman = correlation(real, method="spearman")
    for first, second in [
        ("Balanced Diet", "Chest Pain"),
        ("Air Pollution", "OccuPational Hazards"),
        ("Smoking", "Level"),
        ("Age", "Gender"),
    ]:
        assert pearson.loc[first, second] == pytest.approx(np.corrcoef(raw[first], raw[second])[0, 1], abs=1e-12)
        rho = stats.spearmanr(raw[first], raw[second]).statistic
        assert spearman.loc[first, second] == pytest.approx(rho, abs=1e-12)
    assert pearson.loc["Balanced Diet", "Chest Pain"] == pytest.approx(0.80, abs=0.01)
    assert np.allclose(pearson.to_numpy(), np.corrcoef(np.array([raw[c] for c in VARIABLE_COLUMNS])))


@pytest.mark.realdata
def test_real_claim_check_contradicts_the_papers_prose(real):
    table = claim_check(real)
    assert list(table.columns) == ["claim", "variable_1", "variable_2", "expected", "r", "r_distinct", "verdict"]
    assert list(table["verdict"]) == ["weaker than claimed", "weaker than claimed", "contradicted", "contradicted"]
    by_pair = table.set_index("variable_2")["r"]
    assert by_pair["OccuPational Hazards"] == pytest.approx(0.61, abs=0.01)  # not ~1
    assert by_pair["Chest Pain"] == pytest.approx(0.80, abs=0.01)  # positive, not negative
    assert by_pair["Smoking"] == pytest.approx(0.65, abs=0.01)
    distinct = deduplicate(real, by="rows")
    assert table["r_distinct"].iloc[3] == pytest.approx(
        np.corrcoef(distinct["Balanced Diet"], distinct["Chest Pain"])[0, 1], abs=1e-12
    )


@pytest.mark.realdata
def test_real_strongest_pairs_and_level(real, raw):
    names = [c for c in VARIABLE_COLUMNS if c != "Level"]
    matrix = np.corrcoef(np.array([raw[c] for c in names]))
    upper = np.triu_indices(len(names), k=1)
    best = np.argmax(matrix[upper])
    pairs = strongest_pairs(real, n=10)
    assert len(pairs) == 20
    top = pairs.iloc[0]
    assert {top.variable_1, top.variable_2} == {names[upper[0][best]], names[upper[1][best]]}
    assert {top.variable_1, top.variable_2} == {"OccuPational Hazards", "Genetic Risk"}
    assert top.r == pytest.approx(matrix[upper].max(), abs=1e-12)
    negative = pairs[pairs.direction == "negative"]
    assert negative.r.iloc[0] == pytest.approx(matrix[upper].min(), abs=1e-12)
    assert (negative.r < 0).all() and negative.r.is_monotonic_increasing
    assert pairs[pairs.direction == "positive"].r.is_monotonic_decreasing
    assert "Level" not in set(pairs.variable_1) | set(pairs.variable_2)

    level = correlation_with_level(real)
    assert len(level) == 23 and level.r.is_monotonic_decreasing
    assert level.iloc[0].variable == "Obesity"
    assert level.iloc[0].r == pytest.approx(np.corrcoef(raw["Obesity"], raw["Level"])[0, 1], abs=1e-12)
    assert (level.set_index("variable").loc[list(FACTOR_COLUMNS), "r"] > 0.2).all()


@pytest.mark.realdata
def test_real_heatmap_labels_and_title(real):
    fig = plot_risk_heatmap(real)
    ax = fig.axes[0]
    rows = [t.get_text() for t in ax.get_yticklabels()]
    columns = [t.get_text() for t in ax.get_xticklabels()]
    order = cluster_order(correlation(real))
    assert rows == order[1:] and columns == order[:-1]
    assert set(rows) | set(columns) == set(VARIABLE_COLUMNS)
    assert "152 distinct" in ax.get_title() and "synthetic" not in ax.get_title()
    mesh = ax.collections[0]
    assert (mesh.norm.vmin, mesh.norm.vmax) == (-1.0, 1.0)
    assert len(ax.texts) == 23 * 24 // 2  # lower triangle of 24 variables, without the diagonal


# ------------------------------------------------------------------------------ loader variants, errors
def _write(frame: pd.DataFrame, path, **options):
    frame.to_csv(path, **options)
    return path


@pytest.fixture(scope="module")
def raw_frame(risk_csv):
    return pd.read_csv(risk_csv)


@pytest.fixture(scope="module")
def kaggle_like_frame():
    """A synthetic table laid out like the Kaggle file (index column, Level as text): needs no real data."""
    table = synthetic_risk_table(40, seed=0)
    table = table.assign(Level=table["Level"].astype(str))
    table.insert(0, "index", np.arange(len(table)))
    return table


def _same_variables(table, reference):
    pd.testing.assert_frame_equal(
        table[list(VARIABLE_COLUMNS)].reset_index(drop=True), reference[list(VARIABLE_COLUMNS)].reset_index(drop=True)
    )


@pytest.mark.realdata
def test_loader_accepts_common_variants(raw_frame, real, tmp_path):
    no_index = _write(raw_frame.drop(columns="index"), tmp_path / "no_index.csv", index=False)
    no_id = _write(raw_frame.drop(columns=["index", "Patient Id"]), tmp_path / "no_id.csv", index=False)
    numeric = raw_frame.assign(Level=raw_frame["Level"].map(LEVEL_CODES))
    numeric_level = _write(numeric, tmp_path / "numeric_level.csv", index=False)
    pandas_index = _write(raw_frame.drop(columns="index"), tmp_path / "pandas_index.csv")  # "Unnamed: 0"
    respelled = raw_frame.rename(
        columns={"OccuPational Hazards": "Occupational Hazards", "chronic Lung Disease": "chronic_lung_disease"}
    )
    respelled = _write(respelled.assign(Level=respelled["Level"].str.upper()), tmp_path / "respelled.csv", index=False)
    for path in (no_index, no_id, numeric_level, pandas_index, respelled):
        _same_variables(load_risk_table(path), real)
    assert ID_COLUMN not in load_risk_table(no_id).columns
    assert load_risk_table(pandas_index).index.name == "index"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda f: f.drop(columns=["Snoring", "Dry Cough"]), ["missing columns", "'Snoring'", "'Dry Cough'"]),
        (lambda f: f.assign(Mood=1), ["unexpected columns", "'Mood'"]),
        (lambda f: f.assign(**{"Occupational Hazards": 1}), ["same variable", "OccuPational Hazards"]),
        (lambda f: f.assign(Smoking=f["Smoking"].mask(f.index == 5, 10)), ["'Smoking'", "10", "1..9", "row 5"]),
        (lambda f: f.assign(Gender=f["Gender"].mask(f.index == 2, 3)), ["'Gender'", "3", "1/2", "row 2"]),
        (lambda f: f.assign(Age=f["Age"].mask(f.index == 7, -4)), ["'Age'", "-4", "row 7"]),
        (lambda f: f.assign(Level=f["Level"].mask(f.index == 0, "Severe")), ["'Level'", "'Severe'", "row 0"]),
        (lambda f: f.assign(Fatigue=f["Fatigue"].mask(f.index == 3, np.nan)), ["'Fatigue'", "missing", "row 3"]),
        (lambda f: f.assign(Obesity=f["Obesity"].astype(str).mask(f.index == 4, "high")), ["'Obesity'", "non-numeric"]),
        (lambda f: f.assign(Wheezing=f["Wheezing"].mask(f.index == 1, 2.5)), ["'Wheezing'", "non-integer", "2.5"]),
    ],
)
def test_loader_names_what_is_wrong(kaggle_like_frame, tmp_path, edit, expected):
    assert len(load_risk_table(_write(kaggle_like_frame, tmp_path / "intact.csv", index=False))) == 40
    path = _write(edit(kaggle_like_frame.copy()), tmp_path / "broken.csv", index=False)
    with pytest.raises(DataFormatError) as caught:
        load_risk_table(path)
    assert caught.value.path == str(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    for fragment in expected:
        assert fragment in message
    assert isinstance(caught.value, ValueError)


def test_loader_refuses_missing_empty_and_headerless_files(tmp_path):
    with pytest.raises(MissingDataError):
        load_risk_table(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataFormatError, match="readable CSV"):
        load_risk_table(tmp_path / "empty.csv")
    header_only = ",".join(VARIABLE_COLUMNS) + "\n"
    (tmp_path / "header.csv").write_text(header_only)
    with pytest.raises(DataFormatError, match="no rows"):
        load_risk_table(tmp_path / "header.csv")


# ------------------------------------------------------------------------------------- synthetic cohort
def test_synthetic_schema_ranges_and_round_trip(tmp_path):
    table = synthetic_risk_table(300, seed=1)
    assert list(table.columns) == [ID_COLUMN, *VARIABLE_COLUMNS] and len(table) == 300
    assert table.attrs["synthetic"] is True
    assert table[list(FACTOR_COLUMNS)].to_numpy().min() >= 1 and table[list(FACTOR_COLUMNS)].to_numpy().max() <= 9
    assert set(table["Gender"]) <= {1, 2} and table["Age"].between(14, 73).all()
    assert list(table["Level"].cat.categories) == list(LEVELS) and table["Level"].cat.ordered
    assert all(table[c].dtype == np.int64 for c in VARIABLE_COLUMNS[:-1])
    path = _write(table, tmp_path / "synthetic.csv", index=False)
    loaded = load_risk_table(path)
    _same_variables(loaded, table)
    assert list(loaded[ID_COLUMN]) == list(table[ID_COLUMN])


def test_synthetic_is_deterministic_per_seed():
    pd.testing.assert_frame_equal(synthetic_risk_table(200, seed=3), synthetic_risk_table(200, seed=3))
    assert not synthetic_risk_table(200, seed=3).equals(synthetic_risk_table(200, seed=4))
    generator = np.random.default_rng(3)
    assert len(synthetic_risk_table(10, seed=generator)) == 10


def test_synthetic_follows_its_generative_model():
    table = synthetic_risk_table(4000, seed=0)
    shares = table["Level"].value_counts(normalize=True)
    assert shares["Low"] == pytest.approx(0.30, abs=0.03)
    assert shares["Medium"] == pytest.approx(0.34, abs=0.03)
    assert shares["High"] == pytest.approx(0.36, abs=0.03)
    level = correlation_with_level(table).set_index("variable")["r"]
    assert (level[list(FACTOR_COLUMNS)] > 0.2).all()  # every factor is scored "higher = more risk"
    assert abs(level["Age"]) < 0.2
    matrix = correlation(table)
    # one latent cause ties pairs within a group more than across groups
    assert matrix.loc["Air Pollution", "OccuPational Hazards"] > matrix.loc["Air Pollution", "Smoking"] + 0.3
    assert matrix.loc["Smoking", "Alcohol use"] > matrix.loc["Smoking", "Genetic Risk"] + 0.3
    assert duplication_report(table).n_distinct_rows == 4000


@pytest.mark.parametrize("n", [0, -5, 2.5, "100"])
def test_synthetic_refuses_bad_sizes(n):
    with pytest.raises(InvalidParameterError, match="n must be"):
        synthetic_risk_table(n)


# ------------------------------------------------------------------------------- analysis and the plot
def test_cluster_order_keeps_correlated_blocks_together():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 500))
    frame = pd.DataFrame(
        {"a1": a, "b1": b, "a2": a + 0.3 * rng.standard_normal(500), "b2": b + 0.3 * rng.standard_normal(500),
         "a3": a + 0.5 * rng.standard_normal(500)}
    )
    order = cluster_order(frame.corr())
    positions = sorted(order.index(name) for name in ("a1", "a2", "a3"))
    assert positions in ([0, 1, 2], [2, 3, 4])


def test_claim_check_verdict_rules():
    table = synthetic_risk_table(500, seed=0)
    claims = [
        Claim("smokers drink", "Smoking", "Alcohol use", "positive"),
        Claim("smoking protects", "Smoking", "Level", "negative"),
        Claim("age and gender unrelated", "Age", "Gender", "positive"),
        Claim("identical", "Smoking", "Alcohol use", "near_one"),
    ]
    verdicts = list(claim_check(table, claims)["verdict"])
    assert verdicts == ["supported", "contradicted", "no clear correlation", "weaker than claimed"]
    with pytest.raises(InvalidParameterError, match="unknown variable"):
        claim_check(table, [Claim("x", "Smoking", "Mood", "positive")])
    with pytest.raises(InvalidParameterError, match="expectation"):
        claim_check(table, [Claim("x", "Smoking", "Age", "huge")])


def test_invalid_options_are_refused():
    table = synthetic_risk_table(50, seed=0)
    with pytest.raises(InvalidParameterError, match="method"):
        correlation(table, method="kendall")
    with pytest.raises(InvalidParameterError, match="by must be"):
        deduplicate(table, by="patients")
    with pytest.raises(InvalidParameterError, match="lacks columns"):
        duplication_report(table.drop(columns="Snoring"))


def test_synthetic_heatmap_says_synthetic_and_labels_every_variable():
    table = synthetic_risk_table(300, seed=0)
    fig = plot_risk_heatmap(table, method="spearman", cluster=False, triangle=False)
    ax = fig.axes[0]
    assert "synthetic" in ax.get_title() and "Spearman" in ax.get_title()
    assert [t.get_text() for t in ax.get_yticklabels()] == list(VARIABLE_COLUMNS)
    assert [t.get_text() for t in ax.get_xticklabels()] == list(VARIABLE_COLUMNS)
    assert len(ax.texts) == 24 * 24
    rho = stats.spearmanr(table["Smoking"], table["Alcohol use"]).statistic
    row, column = VARIABLE_COLUMNS.index("Smoking"), VARIABLE_COLUMNS.index("Alcohol use")
    assert ax.texts[row * 24 + column].get_text() == f"{rho:.2f}".replace("0.", ".", 1)
    _, given_ax = plt.subplots()
    assert plot_risk_heatmap(table, ax=given_ax) is given_ax.figure
