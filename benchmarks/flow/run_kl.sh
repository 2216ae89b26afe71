#!/bin/bash
# usage: benchmarks/flow/run_kl.sh NAME "<kl_train.py args>" [NAME2 "<args>"]   (at most 2 at a time)
# Runs the given trainings concurrently (not pinned: the machine is shared), logs in results/.
cd "$(dirname "$0")"
PY=${PY:-python}
while [ $# -ge 2 ]; do
  name=$1; a=$2; shift 2
  $PY kl_train.py $a --out results/$name.json > results/$name.log 2>&1 &
done
wait
