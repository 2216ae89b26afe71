#!/bin/sh
# The digits flow regularised against not (README.md, "The digits density flow"): the shipped
# ffjord.digits command (hidden 256x2, dopri5 at rtol = atol = TOL (1e-3 shipped), Adam 0.002
# cosine, batch 256) for EPOCHS epochs, once per λ_k = λ_j in LAMBDAS and seed in SEEDS, one after
# another, each under /usr/bin/time (CPU seconds): results/digits_e<EPOCHS>_l<λ>_s<seed>.{log,time}
# (..._tol<TOL> when TOL is not 0.001); zoo folders in $OUT. Run from this folder with a frozen
# install of odezoo on PATH:
#   EPOCHS=40 LAMBDAS="0 0.01 0.001" SEEDS=0 OUT=/tmp/digits ./run_digits.sh
#   EPOCHS=40 LAMBDAS="0 0.01" TOL=1e-05 OUT=/tmp/digits ./run_digits.sh
set -e
OUT=${OUT:-/tmp/odezoo-digits-reg}
EPOCHS=${EPOCHS:-40}
TOL=${TOL:-0.001}
for seed in ${SEEDS:-0}; do
    for lam in ${LAMBDAS:-0 0.01 0.001}; do
        name=digits_e${EPOCHS}_l${lam}_s${seed}
        if [ "$TOL" != 0.001 ]; then name=${name}_tol${TOL}; fi
        if [ "$lam" = 0 ]; then REG=""; else REG="--config regularization={\"kinetic\":$lam,\"jacobian\":$lam}"; fi
        /usr/bin/time -f "%U user %S sys %e wall" -o results/$name.time \
            odezoo train ffjord --dataset digits --epochs "$EPOCHS" --batch-size 256 --lr 0.002 --seed "$seed" \
            --lr-schedule cosine --config atol=$TOL --config 'hidden=[256, 256]' --config rtol=$TOL \
            $REG --tag digits --out "$OUT/$name" > results/$name.log 2>&1
    done
done
