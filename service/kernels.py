"""score-file's kernels in C (``service/_kernels.c``): their signatures, and the library.

The library is built with the package (``pip install``, as ``make`` runs it; a C compiler is
needed) as the extension module ``service._kernels``, and called through ctypes, which
releases the GIL for each call: the threads of :mod:`service.file_scoring` run the kernels
at once. Each argument's dtype, dimensions and layout are checked by ctypes before the call;
the sizes passed with them are the callers' (:mod:`service.line_reader`,
:mod:`service.column_verdicts`, :mod:`service.csv_output`), which take them from the arrays.
"""

from __future__ import annotations

import ctypes
import importlib.util
from typing import Any

import numpy as np
import numpy.typing as npt

# Roles of a file's columns (read_lines), kinds of terms and reasons (nearest).
SKIP, NUMERIC, CATEGORICAL = 0, 1, 2
TERM_NUMERIC, TERM_CATEGORICAL = 0, 1
# What read_lines returns for lines it does not read.
NOT_SIMPLE = -1


def _array(dtype: npt.DTypeLike, ndim: int) -> Any:
    """A ctypes argument type: a C-contiguous numpy array of ``dtype`` and ``ndim``."""
    return np.ctypeslib.ndpointer(dtype=dtype, ndim=ndim, flags="C_CONTIGUOUS")


def _load() -> ctypes.CDLL:
    """The built library; ImportError, saying how to build it, if it is not there."""
    spec = importlib.util.find_spec("service._kernels")
    if spec is None or spec.origin is None:
        raise ImportError(
            "service._kernels is not built: install the package with a C compiler at hand "
            "(pip install ., or make)"
        )
    return ctypes.CDLL(spec.origin)


_LIBRARY = _load()
_BYTES, _INT64S, _DOUBLES = _array(np.uint8, 1), _array(np.int64, 1), _array(np.float64, 1)
_INT64S_2D, _DOUBLES_2D = _array(np.int64, 2), _array(np.float64, 2)
_INT, _DOUBLE = ctypes.c_int64, ctypes.c_double


def _declare(name: str, restype: Any, *argtypes: Any) -> Any:
    """The library's function ``name``, its result and argument types set."""
    function = getattr(_LIBRARY, name)
    function.restype = restype
    function.argtypes = argtypes
    return function


count_lines = _declare("count_lines", _INT, _BYTES, _INT)
category_table = _declare("category_table", None, _BYTES, _INT64S, _INT, _INT64S, _INT)
read_lines = _declare(
    "read_lines",
    _INT,
    *(_BYTES, _INT, _INT, _INT),  # data, size, rows, columns
    *(_INT64S, _INT64S),  # roles, slots
    *(_INT64S_2D, _INT),  # tables, table size
    *(_BYTES, _INT64S_2D, _INT),  # texts, offsets, offsets' width
    *(_DOUBLES_2D, _INT64S_2D, _INT64S, _INT64S),  # numbers, codes, starts, ends
)
magnitudes = _declare(
    "magnitudes", None, *(_DOUBLES_2D, _INT, _INT, _INT, _INT), _INT, _DOUBLES_2D
)  # numbers, p, n, lo, m, n_logged, logged
scale_rows = _declare(
    "scale_rows",
    _INT,
    *(_DOUBLES_2D, _INT, _INT, _INT, _INT),  # numbers, p, n, lo, m
    *(_DOUBLES_2D, _INT),  # logged, n_logged
    *(_DOUBLES, _DOUBLES, _DOUBLE, _INT64S),  # center, spread, limit, numeric_at
    *(_INT64S_2D, _INT, _INT64S),  # codes, c, category_start
    *(_DOUBLES_2D, _INT, _DOUBLES_2D, _INT),  # scaled, stride, x, dim
)
nearest = _declare(
    "nearest",
    None,
    *(_DOUBLES_2D, _INT, _INT64S_2D, _INT, _INT, _INT),  # scaled, stride, codes, n, lo, m
    *(_DOUBLES, _INT, _INT64S, _INT64S),  # norms, terms, kinds, sources
    *(_array(np.float64, 3), _INT, _INT),  # weights, width, k
    *(_DOUBLES, _DOUBLES_2D),  # centroid norms, numeric centres
    *(_INT64S_2D, _DOUBLES_2D, _INT, _INT),  # reasons, ranked, its width, fields
    *(_INT64S, _DOUBLES, _INT64S),  # labels, distance, reason
)
join_rows = _declare(
    "join_rows",
    _INT,
    *(_BYTES, _INT64S, _INT64S),  # lines
    *(_BYTES, _INT64S, _INT64S),  # distances
    *(_BYTES, _INT64S, _INT64S),  # scores
    *(_BYTES, _INT64S, _INT64S),  # constants
    *(_INT64S, _INT64S, _INT, _INT),  # cluster, verdict, k, rows
    *(_BYTES, _INT),  # out, its capacity
)
