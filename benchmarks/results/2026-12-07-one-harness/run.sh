#!/bin/bash
# Side by side: the commit before the harness (prev, c2e76f8) and after (head, d076dbd), alternated.
export JAX_PLATFORMS=cpu
PY=/work/main/.venv/bin/python
for round in 1 2; do
  for tree in prev head; do
    dir=/tmp/$tree; [ $tree = head ] && dir=/tmp/full-head
    echo "=== harness_overhead $tree round $round $(date -u +%H:%M:%S)"
    (cd $dir && PYTHONPATH=$dir timeout 600 $PY benchmarks/harness_overhead.py --steps=30 --repeats=3 2>&1 | tail -15)
  done
done
for round in 1 2; do
  for tree in prev head; do
    dir=/tmp/$tree; [ $tree = head ] && dir=/tmp/full-head
    echo "=== xla_vs_torch $tree round $round $(date -u +%H:%M:%S)"
    (cd $dir && PYTHONPATH=$dir timeout 900 $PY benchmarks/xla_vs_torch.py --config=configs/mpt.py:tiny --modes=jax,torch-eager --rounds=2 --steps=20 --out=/tmp/bench/xvt-$tree-$round 2>&1 | tail -15)
  done
done
echo "=== done $(date -u +%H:%M:%S)"
