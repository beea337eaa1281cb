#!/usr/bin/env bash
# The sweeps behind docs/results/findings/ (issue 15, item 4): the paper's findings re-tested at
# small scale with SmolLM2-135M-Instruct on this 2-core CPU, every test score on the FULL E2E
# test set (630 MRs, beam 5), so that prefixtune-collect's paired bootstrap can tell an effect
# from noise. Each part is one Hydra sweep into a fixed folder, outputs/multirun/findings/<part>,
# always with resume=true: rerunning a part after a kill continues its unfinished job from the
# last checkpoint and skips the finished ones (each says so), so a part can be spread over
# several working stretches. Two jobs run at once, one thread each; steps, not wall-clock
# budgets, size every part except `budget`, so a busy machine slows them but changes no number
# (the budget part runs its jobs one at a time at 2 threads, so that each gets the same machine).
#   bash scripts/findings_cpu.sh init                  # one part (several: init low_data ...)
#   bash scripts/findings_cpu.sh all                   # every part, in the order below
#   prefixtune-collect outputs/multirun/findings/init --out docs/results/findings/init
# Measured per low-data job, two at once at one thread each (run.json's phases): prefix-tuning
# ~17 min of training (100 steps of batch 10) + ~10 min to generate and score the 630 test MRs
# (27 min a job); fine-tuning ~22-38 min + ~21 min (its evaluation then was transformers'
# generate; it is now our beam search too, ~2.5x faster on 100 test MRs with identical outputs).
# The low_data part is ~6 h here, init ~1.5 h.
#   init      (paper, figure 5) low data, 100 examples (experiment=e2e_lowdata: L=6, lr 5e-5,
#             batch 10, patience 5) at 100 steps, the smallest of the paper's step grid
#             {100, 200, 400, 600} (400 steps would take 23 min a job here): random vs "table-to-text:"
#             vs "elephant", 2 random subsamples, seed 1: 6 jobs
#   low_data  (paper, figure 3) prefix vs fine-tuning at 50/100/200/500 examples, 2 subsamples,
#             seed 1, the same protocol: 14 jobs (fine-tuning at the paper's lr 5e-5 too; the
#             prefix runs at 100 are part init's "table-to-text:" runs)
#   position  (paper, section 7.2) prefix vs infix vs embedding-only, L=10, full data, 300 steps
#             of batch 8 at lr 5e-4, seeds 1 and 2: 6 jobs
#   length    (paper, figure 4) L in {1,5,10,20,40}, the same budget, seeds 1 and 2: 10 jobs
#   budget    (paper, table 1) prefix vs fine-tuning vs FT-top2 under one wall-clock budget
#             (train.max_minutes=30, evaluation after it), seeds 1 and 2: 6 jobs; then the
#             headline pair, prefix vs fine-tuning, 110 min of training each (2 hours with the
#             evaluation), seed 1: 2 jobs
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything below is one function, called on the last line: bash reads a script as it runs it,
# so a script edited while a part runs (its hours) would go on with the new file's bytes at the
# old offset; a function is read whole before anything runs.
main() {
  export TOKENIZERS_PARALLELISM=false
  PARTS=(init low_data position length budget)
  WANT=("$@")
  [[ ${#WANT[@]} -eq 0 || ${WANT[0]} == all ]] && WANT=("${PARTS[@]}")
  for w in "${WANT[@]}"; do
    [[ " ${PARTS[*]} " == *" $w "* ]] || {
      echo "error: unknown part '$w'; choose from: ${PARTS[*]} all" >&2
      exit 2
    }
  done

  TEST=(eval.split=test eval.max_examples=-1 eval.num_beams=5 eval.max_new_tokens=64 resume=true)
  # two jobs at once, one thread each (more throughput here than one job at 2 threads)
  LAUNCH=(hydra/launcher=parallel hydra.launcher.n_jobs=2)
  LOWDATA=(experiment=e2e_lowdata model=smollm2-135m train.max_steps=100 train.low_data_seed=0,1 seed=1)
  FULL=(experiment=e2e_smollm2_cpu_prefix train.max_steps=300 train.eval_every=60 seed=1,2)

  sweep() { # sweep <part> <overrides...>
    local part=$1
    shift
    echo "== findings part $part: $(date -u +%FT%TZ)"
    python train.py -m "$@" "${TEST[@]}" "${LAUNCH[@]}" "hydra.sweep.dir=outputs/multirun/findings/$part"
    echo "== findings part $part done: $(date -u +%FT%TZ)"
}

for w in "${WANT[@]}"; do
  case $w in
  init) sweep init "${LOWDATA[@]}" train.low_data=100 prefix_init=random,table-to-text,elephant ;;
  low_data)
    # prefix_init=table-to-text on both sides (it is experiment=e2e_lowdata's init; fine-tuning
    # ignores it) so that these runs pair with part init's, which has prefix-tuning at 100
    sweep low_data/finetune train.low_data=100,50,200,500 "${LOWDATA[@]}" method=finetune \
      prefix_init=table-to-text
    sweep low_data/prefix train.low_data=50,200,500 "${LOWDATA[@]}" prefix_init=table-to-text
    ;;
  position) sweep position "${FULL[@]}" prefix.mode=prefix,infix,embedding ;;
  length) sweep length "${FULL[@]}" prefix.length=1,5,10,20,40 ;;
  budget)
    LAUNCH=() # one job at a time, at 2 threads: every job sees the same machine
    # one wall-clock budget for all three; each method keeps its own hyperparameters in its own
    # experiment file (prefix lr 5e-4; fine-tuning and FT-top2 the paper's 5e-5), as in the
    # paper's table 1, and one sweep over `experiment` makes the runs pairs for findings.md
    # (their method.name differs)
    local_budget=(train.max_steps=-1 train.epochs=100 train.max_minutes=30 seed=1,2)
    sweep budget experiment=e2e_smollm2_cpu_prefix,e2e_smollm2_cpu_finetune,e2e_smollm2_cpu_ft_top2 \
      "${local_budget[@]}"
    headline=(train.max_steps=-1 train.epochs=100 train.max_minutes=110 train.eval_every=200 seed=1)
    sweep headline experiment=e2e_smollm2_cpu_prefix,e2e_smollm2_cpu_finetune "${headline[@]}"
    ;;
  esac
done
}
main "$@"
