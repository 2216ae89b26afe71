#!/bin/sh
# The toy-density runs of README.md: seed 0, the same CPU budget, λ_k = λ_j = 0, 0.01, 0.1, one
# thread each (../flow/kl_train.py), PAR of them at a time. Run from this folder:
#   DATA=8gaussians ./run_toy.sh        (results/toy_8g_*.json)
#   DATA=checkerboard ./run_toy.sh      (results/toy_cb_*.json)
set -e
DATA=${DATA:-8gaussians}
M=${MINUTES:-6}
K=../flow/kl_train.py
MARKS=0.5,1,1.5,2,3,4,5,6,8,10
case $DATA in 8gaussians) P=toy_8g ;; checkerboard) P=toy_cb ;; *) echo "DATA?"; exit 2 ;; esac
run() {  # run SUFFIX LAMBDA
    python $K --data $DATA --seed 0 --minutes $M --marks $MARKS --kinetic $2 --jacobian $2 \
        --out results/${P}_$1.json > results/${P}_$1.log 2>&1
}
run l0 0 &
run l001 0.01
wait
run l01 0.1
