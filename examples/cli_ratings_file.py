"""Complete a ratings file with the command line, then use the saved model from Python.

Writes Apache Spark's MovieLens sample (shipped with lowrank_hpc) as a MovieLens-style file
with text ids, then runs the equivalent of

    lowrank-hpc complete ratings.dat --json --output model.npz --recommend 3 --recommendations-out top3.csv

and loads the model to predict and recommend by the original ids.

    python examples/cli_ratings_file.py
"""
import tempfile
from pathlib import Path

from lowrank_hpc.cli import load_model, main
from lowrank_hpc.datasets import load_movielens_sample

ratings = load_movielens_sample()
with tempfile.TemporaryDirectory() as folder:
    folder = Path(folder)
    lines = (f"user{r}::movie{c}::{v:g}::978300760" for r, c, v in zip(ratings.rows, ratings.cols, ratings.vals))
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n")

    command = ["complete", str(folder / "ratings.dat"), "--output", str(folder / "model.npz"),
               "--recommend", "3", "--recommendations-out", str(folder / "top3.csv"), "--json"]
    print("lowrank-hpc", " ".join(command[:1] + ["ratings.dat"] + command[2:]))
    assert main(command) == 0  # the report is printed as JSON on stdout

    model = load_model(folder / "model.npz")
    print(f"model: {model.method}, rank {model.rank}, {len(model.row_ids)} users x {len(model.col_ids)} movies")
    print("predicted ratings of user0 for movie2 and movie3:", model.predict_ids(["user0", "user0"],
                                                                                 ["movie2", "movie3"]).round(2))
    movies, scores = model.recommend(["user0"], 3)[0]
    print("top 3 unseen movies for user0:", ", ".join(f"{m} ({s:.2f})" for m, s in zip(movies, scores)))
    print("first recommendations from the CSV:", (folder / "top3.csv").read_text().splitlines()[1:3])
