#!/usr/bin/env bash
# Submit a tools/train_net.py run to SLURM: one task per GPU, all started by srun; each task
# reads its rank, the world size and machine 0's address from SLURM's variables (--slurm).
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --cpus-per-task=10 \
#       tools/submit_slurm.sh --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
#       train.output_dir=/shared/output/ddetr_r50
#
# Pre-emption and time limits: SLURM sends SIGUSR1 two minutes before the time limit (the
# --signal line below) and SIGTERM on pre-emption; train_net then finishes its iteration, writes
# a checkpoint and exits with code 75. This script then requeues the job (`scontrol requeue`),
# and the requeued run (SLURM_RESTART_COUNT > 0) gets --resume added, so it continues from that
# checkpoint. A job pre-empted with PreemptMode=REQUEUE is requeued by SLURM itself; the
# --resume is added all the same. Add --resume yourself to continue a run in a new job.
# PYTHON selects the interpreter (default: .venv/bin/python of the submit directory).
# MASTER_PORT may be exported to pick the rendezvous port.
#SBATCH --job-name=detrex_lite
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=USR1@120
set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"
PYTHON=${PYTHON:-.venv/bin/python}
REQUEUE_EXIT_CODE=75  # detrex_lite.engine.REQUEUE_EXIT_CODE

args=("$@")
if [[ "${SLURM_RESTART_COUNT:-0}" -gt 0 && " $* " != *" --resume "* ]]; then
    args=(--resume "${args[@]}")
    echo "submit_slurm: restart ${SLURM_RESTART_COUNT} of job ${SLURM_JOB_ID:-?}: continuing with --resume"
fi

# The signals go to every task directly; this shell only waits (a trap lets `wait` return
# without killing the shell, which then waits again for srun to end).
trap 'echo "submit_slurm: signal received; train_net writes a checkpoint and stops"' TERM USR1
# --kill-on-bad-exit: one failed task ends all of them, so the job fails instead of hanging.
srun --kill-on-bad-exit=1 "$PYTHON" tools/train_net.py --slurm "${args[@]}" &
srun_pid=$!
while true; do
    wait "$srun_pid"
    rc=$?
    kill -0 "$srun_pid" 2>/dev/null || break  # srun ended (else wait was interrupted by a signal)
done

if [[ $rc -eq $REQUEUE_EXIT_CODE && -n "${SLURM_JOB_ID:-}" ]]; then
    echo "submit_slurm: train_net stopped with a checkpoint (exit $rc): requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID" || echo "submit_slurm: scontrol requeue failed; resubmit with --resume"
fi
exit "$rc"
