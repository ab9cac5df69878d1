#!/usr/bin/env bash
# Every GPU check in one go, results under OUT_DIR (tests + steps: about 7 minutes on one H200; train400: 5 more):
#   tests     - the CUDA-only tests (pytest -m gpu)
#   steps     - benchmarks/train_step_suite.py on the full-size SDXL architecture: the seed's recipe,
#               Lightning vs the plain loop, and each speed/memory switch
#   train400  - python train.py for 400 (TRAIN_STEPS) steps of the seed's recipe on the full-size architecture
#               (demo images at 1024 px, no validation): the whole run, data and export included; TRAIN_ARGS adds
#               overrides, e.g. TRAIN_ARGS="model.compile_unet=inductor model.compile_text_encoders=inductor"
# Usage: bash benchmarks/gpu_suite.sh OUT_DIR [STAGE...]   (default: all stages)
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_suite.sh OUT_DIR [tests|steps|train400 ...]}
shift
stages=${*:-tests steps train400}
mkdir -p "$out"
work=$(mktemp -d)  # caches and the training run: large files stay out of OUT_DIR
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 ALDAR_LIT_CACHE=${ALDAR_LIT_CACHE:-$work/cache}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/gpu.csv"
status=0
# the switches still open after the first H200 run (benchmarks/results/train_step_sdxl_arch_h200.json), the
# whole-UNet compile last: it took 272 s to compile on the CPU, against 17 s block by block;
# STEPS_VARIANTS=all runs every one
next_variants=seed_recipe,cached_latents,text_encoders_frozen,double_batch,compiled_unet_blocks,compiled_all,\
fastest,compiled_unet_blocks_half_memory,compiled_all_cudagraphs,adamw_fused,lean_memory,compiled_unet

for stage in $stages; do
  started=$(date +%s)
  case $stage in
    tests)
      $py -m pytest -m gpu -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$out/tests.log" ;;
    steps)
      timeout "${STEPS_TIMEOUT:-420}" $py benchmarks/train_step_suite.py --model sdxl_arch --device cuda \
        ${STEPS_ARGS:---warmup 3 --steps 10 --repeats 2} --variants "${STEPS_VARIANTS:-$next_variants}" \
        --profile --out "$out/train_step_sdxl_arch.json" \
        2>&1 | tee "$out/steps.log" ;;
    train400)
      timeout "${TRAIN_TIMEOUT:-300}" $py train.py experiment=aldar_kose model=sdxl_arch \
        data=demo data.demo.size=1024 callbacks=none logger=csv "trainer.max_steps=${TRAIN_STEPS:-400}" \
        checkpoint.every_n_train_steps=400 'checkpoint.at_steps=[]' "hydra.run.dir=$work/train400" ${TRAIN_ARGS:-} \
        2>&1 | tee "$out/train400.log" && cp "$work/train400/summary.json" "$out/train400_summary.json" ;;
    *)
      echo "unknown stage $stage (tests, steps, train400)" >&2; exit 2 ;;
  esac
  code=$?
  echo "stage $stage: exit $code in $(( $(date +%s) - started )) s" | tee -a "$out/stages.txt"
  [ "$code" -eq 0 ] || status=$code
done
exit $status
