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
if ! err="$("$PYTHON" -c "import ml_collections, absl, flax, optax, numpy, jaxbench.config" 2>&1)"
then
  echo "$0: $PYTHON cannot import what jaxbench needs: $(printf '%s\n' "$err" | tail -n 1)" \
    "(carry pure-Python wheels in .whl/)" >&2
  exit 2
fi
