"""Would successive halving of the grid trials choose what the full grid chose? (issue 21)

Successive halving (the rung rule of Hyperband, KerasTuner's ``Hyperband``) trains every grid trial
for ``r`` epochs, keeps the best ``keep`` trials of each model by a score at that rung and trains
only those to the full ``epochs``. It saves ``(n - keep) * (epochs - r)`` of the ``n * epochs``
trial-epochs. It is only worth offering if it selects the same learning rate and batch size as the
full grid.

This script answers that on recorded learning curves rather than by retraining: the per-epoch
validation history of every grid trial of a full run (``results/histories.csv`` of a run folder,
``phase == "grid"``) and that run's grid table (``results/grid.csv``: the selection metric
``val_dice`` of each trial's restored best weights). The survivors are those of the protocol's own
rule (``TrainConfig.grid_halving``: :func:`nodulekit.training.protocol.halving_survivors`), whose
score of a trial is its validation Dice (Keras's per-epoch ``val_dice``) at its lowest validation
loss up to the rung, i.e. of the weights the protocol would restore if the trial stopped there.
With the rung at the last epoch that score must reproduce the full grid's selection (checked;
printed as ``rung=epochs``).

    python benchmarks/halving.py                       # the committed 2026-12-05 reproduce run
    python benchmarks/halving.py RUN/results/histories.csv RUN/results/grid.csv

The committed run is ``make reproduce`` of 2026-12-05 (18 trials: 2 models x lr {1e-4, 1e-3,
1e-2} x batch {8, 16, 32}, 30 epochs each, 43 min of the 67-min reproduction); its histories are
``results/2026-12-05_reproduce_grid_histories.csv``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from nodulekit.training.protocol import halving_survivors, rung_score

HERE = Path(__file__).resolve().parent
HISTORIES = HERE / "results" / "2026-12-05_reproduce_grid_histories.csv"
GRID = HERE / "results" / "2026-12-05_reproduce_grid.csv"
TRIAL = ["learning_rate", "batch_size"]


def trial_records(histories: pd.DataFrame) -> list[dict]:
    """One record per grid trial (``architecture``, ``learning_rate``, ``batch_size``, ``status``,
    ``history``), in the histories' order: the shape the protocol's halving rule reads."""
    records = []
    for (architecture, learning_rate, batch_size), rows in histories.groupby(["architecture", *TRIAL], sort=False):
        history = rows.sort_values("epoch")[["epoch", "val_loss", "val_dice"]].to_dict(orient="records")
        records.append({"architecture": architecture, "learning_rate": learning_rate, "batch_size": batch_size, "status": "ok", "history": history})
    return records


def halving_table(histories: pd.DataFrame, grid: pd.DataFrame, rungs, keeps) -> pd.DataFrame:
    """One row per (model, rung, keep): does the full grid's choice survive, and at what cost.

    The survivors are those of the protocol's own rule (:func:`nodulekit.training.protocol.halving_survivors`,
    scores by :func:`~nodulekit.training.protocol.rung_score`)."""
    rows = []
    for architecture, history in histories.groupby("architecture", sort=False):
        records = trial_records(history)
        trials = [(r["learning_rate"], r["batch_size"]) for r in records]
        final = grid[grid["architecture"] == architecture].set_index(TRIAL)["val_dice"]
        chosen = final.idxmax()
        runner_up = final.drop(chosen).idxmax()
        epochs = int(history["epoch"].max())
        n = len(final)
        for rung in [*rungs, epochs]:
            ranks = pd.Series([rung_score(r, rung) for r in records], index=pd.MultiIndex.from_tuples(trials)).rank(ascending=False, method="min")
            for keep in keeps if rung < epochs else [n]:
                survivors = [trial for trial, go_on in zip(trials, halving_survivors(records, rung=rung, keep=keep)) if go_on]
                # The survivors are trained to the end; the full grid's numbers then choose among them.
                picked = final.loc[survivors].idxmax()
                rows.append({
                    "architecture": architecture, "rung": rung, "keep": f"{keep}/{n}",
                    "chosen_rank_at_rung": int(ranks[chosen]), "runner_up_rank_at_rung": int(ranks[runner_up]),
                    "same_choice": picked == chosen, "picked": f"lr={picked[0]:g} bs={picked[1]}",
                    "epoch_share": (n * rung + keep * (epochs - rung)) / (n * epochs),
                })
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("histories", nargs="?", type=Path, default=HISTORIES)
    parser.add_argument("grid", nargs="?", type=Path, default=GRID)
    parser.add_argument("--rungs", type=int, nargs="+", default=[5, 10, 15])
    parser.add_argument("--keep", type=int, nargs="+", default=[3, 5])
    args = parser.parse_args(argv)
    histories = pd.read_csv(args.histories)
    if "phase" in histories:
        histories = histories[histories["phase"] == "grid"]
    grid = pd.read_csv(args.grid)
    for architecture, final in grid.groupby("architecture"):
        top = final.sort_values("val_dice", ascending=False).head(2)
        print(f"{architecture}: full grid chose lr={top.iloc[0].learning_rate:g} bs={top.iloc[0].batch_size} "
              f"(val_dice {top.iloc[0].val_dice:.4f}; next lr={top.iloc[1].learning_rate:g} bs={top.iloc[1].batch_size}, {top.iloc[1].val_dice:.4f})")
    table = halving_table(histories, grid, args.rungs, args.keep)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


if __name__ == "__main__":
    main()
