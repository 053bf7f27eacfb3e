#!/usr/bin/env bash
# Submit a tools/train_net.py run to SLURM: one task per GPU, all started by srun; each task
# reads its rank, the world size and machine 0's address from SLURM's variables (--slurm).
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=10 \
#       tools/submit_slurm.sh --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
#       train.output_dir=/shared/output/ddetr_r50
#
# Add --resume before --config-file to continue the run after a pre-emption or a time limit
# (e.g. with `sbatch --requeue`). PYTHON selects the interpreter (default: .venv/bin/python of
# the submit directory). MASTER_PORT may be exported to pick the rendezvous port.
#SBATCH --job-name=detrex_lite
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-.venv/bin/python}
# --kill-on-bad-exit: one failed task ends all of them, so the job fails instead of hanging.
exec srun --kill-on-bad-exit=1 "$PYTHON" tools/train_net.py --slurm "$@"
