#!/bin/sh
# The digits flow regularised against not (README.md, "The digits density flow"): the shipped
# ffjord.digits command, then the same with λ_k = λ_j = 0.01 and 0.001, one after another, each
# under /usr/bin/time (CPU seconds) into results/digits_<suffix>.{log,time}; zoo folders in $OUT.
# Run from this folder with a frozen install of odezoo on PATH:  OUT=/tmp/digits ./run_digits.sh
set -e
OUT=${OUT:-/tmp/odezoo-digits-reg}
run() {  # run SUFFIX LAMBDA
    if [ "$2" = 0 ]; then REG=""; else REG="--config regularization={\"kinetic\":$2,\"jacobian\":$2}"; fi
    /usr/bin/time -f "%U user %S sys %e wall" -o results/digits_$1.time \
        odezoo train ffjord --dataset digits --epochs 40 --batch-size 256 --lr 0.002 --seed 0 \
        --lr-schedule cosine --config atol=0.001 --config 'hidden=[256, 256]' --config rtol=0.001 \
        $REG --tag digits --out "$OUT/$1" > results/digits_$1.log 2>&1
}
run l0 0
run l001 0.01
run l0001 0.001
