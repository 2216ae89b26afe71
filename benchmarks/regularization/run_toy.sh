#!/bin/sh
# The 8gaussians runs of README.md: seed 0, the same CPU budget, λ_k = λ_j = 0, 0.01, 0.1,
# two at a time (one thread each on the 2-core machine). Run from this folder.
set -e
M=${MINUTES:-6}
K=../flow/kl_train.py
MARKS=0.5,1,1.5,2,3,4,5,6
python $K --data 8gaussians --seed 0 --minutes $M --marks $MARKS --out results/toy_8g_l0.json > results/toy_8g_l0.log 2>&1 &
python $K --data 8gaussians --seed 0 --minutes $M --marks $MARKS --kinetic 0.01 --jacobian 0.01 --out results/toy_8g_l001.json > results/toy_8g_l001.log 2>&1
wait
python $K --data 8gaussians --seed 0 --minutes $M --marks $MARKS --kinetic 0.1 --jacobian 0.1 --out results/toy_8g_l01.json > results/toy_8g_l01.log 2>&1
