"""scikit-learn style estimators: :class:`MatrixCompletion`, :class:`MatrixSensing`,
:class:`BooleanMF`, :class:`MixtureCompletion` and :class:`NMF`, one module per model over one shared
conversion layer (``_convert``) and protocol (``_base``).

The constructor stores hyper-parameters only; ``fit`` validates them, runs a solver of
``lowrank_hpc.recover`` and stores the fitted attributes, whose names end with "_".
scikit-learn is not a dependency: ``get_params``/``set_params`` follow its BaseEstimator
protocol from the ``__init__`` signature, and ``__sklearn_tags__`` imports scikit-learn only
when scikit-learn itself asks for the tags.

Inputs are converted the way scikit-learn's ``check_array`` converts them (array-likes, any
layout, integer and object dtypes to float64; float32 and float64 are kept): an estimator
keeps its own copy of the observed entries anyway, so the library's no-silent-copy rule
gives way to the scikit-learn contract here. Arrays stay on their side (numpy -> CPU, CUDA
arrays -> GPU) unless ``backend`` names one, which moves them there; a fitted estimator moves
later inputs to the side of its factors.
"""
from ._base import NotFittedError
from .boolean_mf import BooleanMF
from .completion import COMPLETION_METHODS, MatrixCompletion
from .ebmf import EBMF
from .mixture import MixtureCompletion
from .nmf import NMF
from .sensing import MatrixSensing

__all__ = ["BooleanMF", "COMPLETION_METHODS", "EBMF", "MatrixCompletion", "MatrixSensing", "MixtureCompletion", "NMF",
           "NotFittedError"]
