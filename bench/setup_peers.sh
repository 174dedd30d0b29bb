#!/usr/bin/env bash
# Create the benchmark peers' virtual environments under bench/.venvs/ (git-ignored).
#
# Each peer gets its own venv so that none of them becomes a dependency of lowrank_hpc and their
# pins cannot clash with ours or with each other:
#   bench/.venvs/torch        torch==2.13.0 (the CPU wheel), numpy
#   bench/.venvs/fancyimpute  fancyimpute==0.7.0 with scikit-learn<1.6 (0.7 passes sklearn's
#                             `force_all_finite`, removed in 1.6); scikit-image for the moon image
#   bench/.venvs/spark        pyspark (needs Java 17+ on PATH), numpy
#   bench/.venvs/implicit     implicit (Ben Frederickson's ALS for implicit feedback), numpy, scipy
# A peer that fails to install is reported and skipped; bench_solvers.py then prints
# "not measured: <reason>" for it. Re-running the script re-creates only the missing venvs.
set -uo pipefail
cd "$(dirname "$0")"
VENVS=.venvs
PYTHON=${PYTHON:-python3}
mkdir -p "$VENVS"
status=0

# make_venv NAME CHECK_IMPORT "PIP_ARGS" ["PIP_ARGS"...]: create $VENVS/NAME, run one
# `pip install` per (word-split) PIP_ARGS string, then check the import.
make_venv() {
  local name=$1 check=$2
  shift 2
  local venv="$VENVS/$name"
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "[$name] already set up"
    return 0
  fi
  rm -rf "$venv"
  echo "[$name] creating $venv"
  local ok=1 args
  "$PYTHON" -m venv "$venv" || ok=0
  for args in "$@"; do
    # shellcheck disable=SC2086  # each argument is a list of pip arguments
    [ $ok = 1 ] && { "$venv/bin/pip" install -q $args || ok=0; }
  done
  if [ $ok = 1 ] && "$venv/bin/python" -c "$check"; then
    echo "[$name] ok"
  else
    echo "[$name] FAILED (the benchmark will report it as not measured)"
    rm -rf "$venv"
    status=1
  fi
}

make_venv torch "import torch; print('torch', torch.__version__)" "torch==2.13.0 numpy"

# fancyimpute 0.7's install_requires also lists pytest and nose (its tests only) and cvxopt (an
# optional cvxpy solver); `import fancyimpute` needs knnimpute, scikit-learn and cvxpy (its
# __init__ imports NuclearNormMinimization). So: fancyimpute without deps, then those with theirs
# (pip then warns that cvxopt, nose and pytest are missing: expected).
make_venv fancyimpute \
  "import fancyimpute, sklearn, skimage; print('fancyimpute', fancyimpute.__version__, 'sklearn', sklearn.__version__)" \
  "--no-deps fancyimpute==0.7.0" "knnimpute scikit-learn<1.6 cvxpy scikit-image"

make_venv implicit "import implicit; print('implicit', implicit.__version__)" "implicit numpy scipy threadpoolctl"

if java -version >/dev/null 2>&1; then
  make_venv spark "import pyspark; print('pyspark', pyspark.__version__)" "pyspark numpy"
else
  echo "[spark] skipped: no java on PATH (pyspark needs Java 17+)"
  status=1
fi
exit $status
