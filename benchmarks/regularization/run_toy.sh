#!/bin/sh
# The toy-density runs of README.md: one seed (0 unless SEED), the same CPU budget, one thread each
# (../flow/kl_train.py), two at a time. Run from this folder:
#   DATA=8gaussians ./run_toy.sh        (results/toy_8g_*.json; λ_k = λ_j = 0, 0.01, 0.1, 6 CPU minutes)
#   DATA=checkerboard ./run_toy.sh      (results/toy_cb_*.json)
#   DATA=checkerboard MINUTES=15 LAMBDAS="0 0.01" TAG=_15m ./run_toy.sh   (results/toy_cb_*_15m.json)
#   SEED=1 ... TAG=_15m_s1 ./run_toy.sh   (another seed: the same data stream's seed and initial weights)
set -e
DATA=${DATA:-8gaussians}
M=${MINUTES:-6}
SEED=${SEED:-0}
LAMBDAS=${LAMBDAS:-"0 0.01 0.1"}
K=../flow/kl_train.py
MARKS=0.5,1,1.5,2,3,4,5,6,8,10,12,15,20
case $DATA in 8gaussians) P=toy_8g ;; checkerboard) P=toy_cb ;; *) echo "DATA?"; exit 2 ;; esac
run() {  # run LAMBDA; the file's suffix is the λ without its point (0.01 -> l001)
    python $K --data $DATA --seed $SEED --minutes $M --marks $MARKS --kinetic $1 --jacobian $1 \
        --out results/${P}_l$(echo $1 | tr -d .)${TAG}.json > results/${P}_l$(echo $1 | tr -d .)${TAG}.log 2>&1
}
set -- $LAMBDAS
while [ $# -gt 0 ]; do
    run $1 &
    if [ $# -gt 1 ]; then run $2; shift; fi
    wait
    shift
done
