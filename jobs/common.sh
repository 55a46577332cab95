# Sourced by every job script in jobs/: the site set-up from variables, and one job step that stops cleanly
# and requeues on SLURM's time-limit signal. Not a job script itself.
#
# Site variables (export before sbatch, which passes the environment on; defaults in brackets):
#   CLOUDVOX_ROOT       the cloudvox checkout                       [the folder sbatch was run from]
#   CLOUDVOX_VENV       Python environment to activate              [$CLOUDVOX_ROOT/.venv; "none": keep PATH]
#   CLOUDVOX_MODULES    modules to load, e.g. "openmpi/4.1 hdf5-mpi" [none]
#   CLOUDVOX_SRUN_MPI   srun's MPI plugin for the ranks             [pmix; list yours: srun --mpi=list]
#   CLOUDVOX_SRUN_ARGS  extra srun options, e.g. "--cpu-bind=cores" [none]
#
# Time limit: the scripts ask for --signal=B:USR1@300 (the batch shell gets SIGUSR1 five minutes before
# the limit; `scancel --batch --signal=USR1 JOBID` does the same by hand). The trap forwards it to the
# step's tasks (`scancel --signal=USR1 JOBID`: without --batch the signal goes to the job steps); every
# rank finishes what it is doing (featurize: its current block; train: a checkpoint at one common step)
# and exits; only then, once the step has ended, the job requeues itself. The requeued job runs the same
# command and continues (SLURM_RESTART_COUNT counts the restarts).

cloudvox_setup() {
  CLOUDVOX_ROOT=${CLOUDVOX_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}
  CLOUDVOX_SRUN_MPI=${CLOUDVOX_SRUN_MPI:-pmix}
  if [ -n "${CLOUDVOX_MODULES:-}" ]; then
    # shellcheck disable=SC2086
    module load ${CLOUDVOX_MODULES}
  fi
  local venv=${CLOUDVOX_VENV:-$CLOUDVOX_ROOT/.venv}
  if [ "$venv" != none ]; then
    if [ ! -f "$venv/bin/activate" ]; then
      echo "cloudvox job: no Python environment at $venv: set CLOUDVOX_VENV (or CLOUDVOX_VENV=none)" >&2
      exit 2
    fi
    # shellcheck disable=SC1091
    source "$venv/bin/activate"
  fi
  export HDF5_USE_FILE_LOCKING=FALSE   # parallel file systems (Lustre, GPFS) and MPI-IO
  export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
  export PYTHONUNBUFFERED=1
  echo "$(date -Is) job ${SLURM_JOB_ID:-?} (SLURM_RESTART_COUNT=${SLURM_RESTART_COUNT:-0}) on" \
       "${SLURM_JOB_NUM_NODES:-1} node(s), ${SLURM_NTASKS:-1} task(s); cloudvox from $(command -v cloudvox || echo '?')"
}

_cloudvox_stop=0
_cloudvox_on_usr1() {
  [ "$_cloudvox_stop" = 1 ] && return 0   # re-entry guard (scancel --full signals this shell again)
  _cloudvox_stop=1
  echo "$(date -Is) SIGUSR1 (time limit near): asking every rank to stop cleanly" >&2
  scancel --signal=USR1 "${SLURM_JOB_ID}" || echo "$(date -Is) scancel --signal=USR1 failed" >&2
}

# cloudvox_step CMD ARGS...: run CMD on every task (srun), requeue after a clean stop on SIGUSR1, else exit
# with the step's status (a failing rank ends the step within seconds: --kill-on-bad-exit).
cloudvox_step() {
  trap _cloudvox_on_usr1 USR1
  # shellcheck disable=SC2086
  srun --kill-on-bad-exit=1 --mpi="$CLOUDVOX_SRUN_MPI" ${CLOUDVOX_SRUN_ARGS:-} "$@" &
  local step=$! status=0
  while kill -0 "$step" 2>/dev/null; do wait "$step" || true; done   # bash runs the trap between waits
  wait "$step" || status=$?
  if [ "$_cloudvox_stop" = 1 ]; then
    echo "$(date -Is) step ended (status $status) after the stop request: requeueing job ${SLURM_JOB_ID}" >&2
    scontrol requeue "${SLURM_JOB_ID}" || { echo "$(date -Is) scontrol requeue failed" >&2; exit 1; }
    sleep 60 &   # the requeue ends this shell; do not report a finished job meanwhile
    wait $! || true
    exit 0
  fi
  echo "$(date -Is) step ended with status $status" >&2
  exit "$status"
}
