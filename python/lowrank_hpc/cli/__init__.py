"""The ``lowrank-hpc`` command line (``python -m lowrank_hpc``) and the pieces it is made of.

- :func:`main`: parse arguments, run a command, turn user errors into one-line messages.
- :mod:`.readers`: observed entries from CSV/TSV/MovieLens/whitespace text, Matrix Market,
  .npz and Parquet files, with arbitrary row and column ids mapped to indices.
- :mod:`.model_file`: a fitted model with its id maps, saved to and loaded from .npz
  (:func:`load_model`, :class:`CompletionModel` with ``predict_ids`` and ``recommend``).
- :mod:`.complete` and :mod:`.demo`: the two commands that fit.
"""
from .errors import DataError, UsageError, UserError
from .main import main
from .model_file import CompletionModel, load_model
from .readers import Ratings, read_ratings

__all__ = ["CompletionModel", "DataError", "Ratings", "UsageError", "UserError", "load_model", "main",
           "read_ratings"]
