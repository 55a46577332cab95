# Sourced by every job script in jobs/: the site set-up from variables, and one job step that stops cleanly
# and requeues on SLURM's time-limit signal. Not a job script itself.
#
# Site variables (export before sbatch, which passes the environment on; defaults in brackets):
#   CLOUDVOX_ROOT       the cloudvox checkout                       [the folder sbatch was run from]
#   CLOUDVOX_VENV       Python environment to activate              [$CLOUDVOX_ROOT/.venv; "none": keep PATH]
#   CLOUDVOX_MODULES    modules to load, e.g. "openmpi/4.1 hdf5-mpi" [none]
#   CLOUDVOX_SRUN_MPI   srun's MPI plugin for the ranks             [pmix; list yours: srun --mpi=list]
#   CLOUDVOX_SRUN_ARGS  extra srun options, e.g. "--cpu-bind=cores" [none]
#   CLOUDVOX_MIN_NODES  the fewest nodes a job goes on with after losing nodes [1]
#   CLOUDVOX_DOCTOR     1: `cloudvox doctor` checks every task before the job's work starts; 0: skip [1]
#   CLOUDVOX_LAUNCHER   srun: srun starts every rank [srun]; torchrun: srun starts one torchrun per node, which
#                       starts the node's ranks (c10d rendezvous on the first node, MASTER_PORT or 29500 + job
#                       id mod 1000; training with --backend ddp only; no clean stop on the time-limit signal)
#
# Time limit: the scripts ask for --signal=B:USR1@300 (the batch shell gets SIGUSR1 five minutes before
# the limit; `scancel --batch --signal=USR1 JOBID` does the same by hand). The trap forwards it to the
# step's tasks (`scancel --signal=USR1 JOBID`: without --batch the signal goes to the job steps); every
# rank finishes what it is doing (featurize: its current block; train: a checkpoint at one common step)
# and exits; only then, once the step has ended, the job requeues itself. The requeued job runs the same
# command and continues (SLURM_RESTART_COUNT counts the restarts).
#
# A lost node. By default (--requeue) SLURM ends the job (NODE_FAIL) and requeues it; it starts again when as
# many nodes as it asked for are free (a spare, or the lost node back) and continues from the newest
# checkpoint (train: --resume) or the finished blocks (featurize). With `sbatch --no-kill` it goes on at once
# on fewer nodes instead: SLURM keeps the rest of the allocation, the step ends (a gloo/NCCL rank fails at
# once; an MPI step is ended by SLURM; a hung rank by the collective timeout), and when the job has fewer
# nodes than the step started with, and at least CLOUDVOX_MIN_NODES, the same command runs again on the nodes
# left with as many tasks per node. --no-kill is not the default because losing the node of the batch shell
# itself then leaves the job holding its other nodes, with nothing running, until its time limit (SLURM
# 22.05 neither ends nor requeues it).

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

# cloudvox_preflight DOCTOR-FLAGS...: `cloudvox doctor` on every task of the job (a few seconds): a failed check
# ends the job here, with one line per failure naming its fix, before any work is done
cloudvox_preflight() {
  [ "${CLOUDVOX_DOCTOR:-1}" = 0 ] && return 0
  local status=0
  # shellcheck disable=SC2086
  srun --kill-on-bad-exit=1 --mpi="$CLOUDVOX_SRUN_MPI" ${CLOUDVOX_SRUN_ARGS:-} cloudvox doctor "$@" || status=$?
  if [ "$status" != 0 ]; then
    echo "$(date -Is) cloudvox doctor failed (status $status): fix what its FAIL lines name (CLOUDVOX_DOCTOR=0 skips it)" >&2
    exit "$status"
  fi
}

_cloudvox_stop=0
_cloudvox_on_usr1() {
  [ "$_cloudvox_stop" = 1 ] && return 0   # re-entry guard (scancel --full signals this shell again)
  _cloudvox_stop=1
  echo "$(date -Is) SIGUSR1 (time limit near): asking every rank to stop cleanly" >&2
  scancel --signal=USR1 "${SLURM_JOB_ID}" || echo "$(date -Is) scancel --signal=USR1 failed" >&2
}

# _cloudvox_job_nodes: "COUNT NODELIST" of this job's allocation now (the nodes left after a node failure)
_cloudvox_job_nodes() {
  local info
  info=$(scontrol show job -o "${SLURM_JOB_ID}" 2>/dev/null) || { echo "${SLURM_JOB_NUM_NODES:-1} ${SLURM_JOB_NODELIST:-}"; return; }
  echo "$(sed -n 's/.* NumNodes=\([0-9]*\).*/\1/p' <<< "$info") $(sed -n 's/.* NodeList=\([^ ]*\).*/\1/p' <<< "$info")"
}

# cloudvox_step CMD ARGS...: run CMD on every task (srun), requeue after a clean stop on SIGUSR1, go on with the
# nodes left after a node failure, else exit with the step's status (a failing rank ends the step within
# seconds: --kill-on-bad-exit).
cloudvox_step() {
  trap _cloudvox_on_usr1 USR1
  local nodes list left per_node status overlap=""
  read -r nodes list <<< "$(_cloudvox_job_nodes)"
  per_node=${SLURM_NTASKS_PER_NODE:-$(( ${SLURM_NTASKS:-1} / ${SLURM_JOB_NUM_NODES:-1} ))}
  while true; do
    status=0
    if [ "${CLOUDVOX_LAUNCHER:-srun}" = torchrun ]; then
      local first
      first=$(scontrol show hostnames "$list" | head -n 1)
      # shellcheck disable=SC2086
      srun --kill-on-bad-exit=1 --ntasks-per-node=1 --ntasks="$nodes" $overlap ${CLOUDVOX_SRUN_ARGS:-} \
        torchrun --nnodes="$nodes" --nproc-per-node="$per_node" --rdzv-backend=c10d --rdzv-id="${SLURM_JOB_ID}" \
        --rdzv-endpoint="$first:${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}" --no-python "$@" &
    else
      # shellcheck disable=SC2086
      srun --kill-on-bad-exit=1 --mpi="$CLOUDVOX_SRUN_MPI" $overlap ${CLOUDVOX_SRUN_ARGS:-} "$@" &
    fi
    local step=$!
    while kill -0 "$step" 2>/dev/null; do wait "$step" || true; done   # bash runs the trap between waits
    wait "$step" || status=$?
    if [ "$_cloudvox_stop" = 1 ]; then
      echo "$(date -Is) step ended (status $status) after the stop request: requeueing job ${SLURM_JOB_ID}" >&2
      scontrol requeue "${SLURM_JOB_ID}" || { echo "$(date -Is) scontrol requeue failed" >&2; exit 1; }
      sleep 60 &   # the requeue ends this shell; do not report a finished job meanwhile
      wait $! || true
      exit 0
    fi
    if [ "$status" != 0 ]; then
      read -r left list <<< "$(_cloudvox_job_nodes)"
      if [ -n "$left" ] && [ "$left" -lt "$nodes" ] && [ "$left" -ge "${CLOUDVOX_MIN_NODES:-1}" ]; then
        echo "$(date -Is) step ended with status $status after losing $((nodes - left)) node(s): going on with" \
             "$((left * per_node)) task(s) on the $left node(s) left ($list)" >&2
        nodes=$left
        # the lost step keeps its record (and CPUs) until the controller has heard from every node: the new
        # step shares them (--overlap) instead of waiting for an answer the lost node will never give
        overlap=--overlap
        # srun takes the allocation's size from these (set when the job started, stale now)
        export SLURM_JOB_NUM_NODES=$left SLURM_NNODES=$left SLURM_JOB_NODELIST=$list SLURM_NODELIST=$list \
               SLURM_NTASKS=$((left * per_node)) SLURM_NPROCS=$((left * per_node))
        continue
      fi
    fi
    echo "$(date -Is) step ended with status $status" >&2
    exit "$status"
  done
}
