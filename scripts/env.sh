# Run-time environment for cloudvox commands (sourced by the other scripts).
# Open MPI refuses to run as root and to oversubscribe cores unless told; HDF5 file locking breaks on
# many parallel file systems; one BLAS thread per MPI rank.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
export HDF5_USE_FILE_LOCKING=FALSE
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
