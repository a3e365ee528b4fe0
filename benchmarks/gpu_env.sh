# Sourced (from the repository root) by gpu_session.sh and gpu_suite.sh: the Python they run and
# its import path. The GPU machine allows no installs and lacks ml-collections, so pure-Python
# wheels carried in .whl/ go on PYTHONPATH as they are (Python imports a pure-Python wheel as a
# zip; no pip), then the checkout. Stops the script (exit 2) before any GPU work if the Python
# still lacks what jaxbench imports.
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import ml_collections" 2>/dev/null; then
  for wheel in "$PWD"/.whl/*.whl; do
    if [ -f "$wheel" ]; then PYTHONPATH="$wheel${PYTHONPATH:+:$PYTHONPATH}"; fi
  done
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! missing="$("$PYTHON" -c "
import importlib.util
print(' '.join(m for m in ('ml_collections', 'absl', 'jax', 'flax', 'optax', 'numpy')
               if importlib.util.find_spec(m) is None))")" || [ -n "$missing" ]; then
  echo "$0: $PYTHON lacks: ${missing:-python itself} (carry pure-Python wheels in .whl/)" >&2
  exit 2
fi
