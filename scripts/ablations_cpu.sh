#!/usr/bin/env bash
# Reduced ablations of the paper on this 2-core CPU with SmolLM2-135M-Instruct (the offline
# default model), each sweep followed by its collector call writing into docs/results/<name>/.
# Measured on one thread per job (a SmolLM2 prefix step at batch 8 ~4.3 s, beam-5 generation
# ~2 s per output, scoring and loading ~30 s):
#   1. prefix length on E2E, L in {1,5,10,20,40}:           5 jobs x ~6 min = ~30 min
#   2. initialisation in low data (E2E, 100 examples):       8 jobs x ~6.5 min = ~52 min
#      random / "table-to-text:" / "summarize" / "elephant", 2 random subsamples, seed 1
#   3. position: prefix vs embedding-only vs infix, L=10:    3 jobs x ~6 min = ~18 min
# Every run trains 50-60 steps of batch 8 (vs the paper's 5 epochs) with lr 5e-4 (the quick
# start's), selects the best dev-loss checkpoint, and scores beam-5 outputs for the first 30
# E2E test MRs: small budgets and a 30-MR slice, so compare settings with each other, not with
# the paper's numbers. Jobs run one after another.
#   bash scripts/ablations_cpu.sh                       # all three, from the repository root
#   bash scripts/ablations_cpu.sh init position         # only these (prefix_length|init|position)
# The committed results (docs/results/) ran with OMP_NUM_THREADS=1; two of these scripts (with
# different ablations) can then run side by side on 2 cores.
# The multirun folders go to outputs/multirun/cpu_<name>_<date>; rerun a killed sweep's jobs by
# adding resume=true hydra.sweep.dir=<that folder> to its command. The collector refuses to
# write into an existing docs/results/<name>/: move the old results away first.
set -euo pipefail
cd "$(dirname "$0")/.."
STAMP=$(date +%Y-%m-%d_%H-%M-%S)
export TOKENIZERS_PARALLELISM=false

# The shared reduced budget (on top of experiment=e2e_smollm2_quick: SmolLM2-135M, prefix L=10
# initialised from "table-to-text:", lr 5e-4, beam 5).
BUDGET=(
  experiment=e2e_smollm2_quick
  train.batch_size=8 train.max_steps=60 train.eval_every=30 train.max_dev_examples=32
  eval.split=test eval.max_examples=30 eval.num_beams=5 eval.max_new_tokens=48
)

WANT=("${@:-prefix_length init position}")
wanted() { [[ " ${WANT[*]} " == *" $1 "* ]]; }
for w in ${WANT[*]}; do
  case $w in prefix_length | init | position) ;;
  *) echo "error: unknown ablation '$w'; choose from: prefix_length init position" >&2; exit 2 ;;
  esac
done

# 1. Prefix length (paper, figure 4, table-to-text panel): L in {1, 5, 10, 20, 40}.
if wanted prefix_length; then
  DIR=outputs/multirun/cpu_prefix_length_$STAMP
  python train.py -m sweep=prefix_length "${BUDGET[@]}" "hydra.sweep.dir=$DIR"
  python scripts/collect.py "$DIR" --out docs/results/prefix_length
fi

# 2. Initialisation in low data (paper, figure 5): E2E with 100 training examples and a
#    30-example dev split, L=6 (experiment=e2e_lowdata) on SmolLM2, 50 steps of batch 8
#    (4 epochs), 2 random subsamples x 1 seed per initialisation.
if wanted init; then
  DIR=outputs/multirun/cpu_init_$STAMP
  python train.py -m sweep=init experiment=e2e_lowdata model=smollm2-135m \
    prefix_init=random,table-to-text,summarize,elephant train.low_data_seed=0,1 seed=1 \
    train.lr=5e-4 train.batch_size=8 train.max_steps=50 train.eval_every=25 train.patience=0 \
    eval.split=test eval.max_examples=30 eval.num_beams=5 eval.max_new_tokens=48 \
    "hydra.sweep.dir=$DIR"
  python scripts/collect.py "$DIR" --out docs/results/init
fi

# 3. Position and depth (paper, table 4): prefix vs embedding-only vs infix at L=10.
if wanted position; then
  DIR=outputs/multirun/cpu_position_$STAMP
  python train.py -m sweep=position prefix.length=10 "${BUDGET[@]}" "hydra.sweep.dir=$DIR"
  python scripts/collect.py "$DIR" --out docs/results/position
fi
