"""Launcher detection from synthetic environments (the real srun is exercised in tests/jobs/test_slurm.py)."""
from hpc.launcher import describe, first_host, launch_env, mpi_launched


def test_every_launcher_maps_to_rank_size_and_local_rank():
    assert launch_env({}).size == 1 and launch_env({}).launcher == "none"
    e = launch_env({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                    "SLURM_JOB_NODELIST": "gpu[07-09]", "SLURM_JOB_ID": "1234"})
    assert (e.rank, e.size, e.local_rank, e.launcher) == (3, 8, 1, "openmpi")
    assert (e.master_addr, e.master_port) == ("gpu07", 29734)
    e = launch_env({"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "0"})
    assert (e.rank, e.size, e.local_rank, e.launcher) == (2, 4, 0, "mpich")
    e = launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"})
    assert (e.rank, e.size, e.launcher, e.master_addr, e.master_port) == (1, 2, "torchrun", "h", 1)


def test_slurm_step_counts_the_steps_tasks_not_the_jobs():
    # a job of 16 tasks running a step of 4 (srun -n 4): size 4, master on the step's first node
    step = {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "16", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "n[1-4]", "SLURM_STEP_NODELIST": "n[3-4]",
            "SLURM_RESTART_COUNT": "2"}
    e = launch_env(step)
    assert (e.rank, e.size, e.local_rank, e.launcher, e.master_addr) == (3, 4, 1, "slurm", "n3")
    assert (e.slurm_job_id, e.slurm_restart_count) == ("77", 2)
    assert "SLURM_RESTART_COUNT=2" in describe(e) and "4 rank(s)" in describe(e)


def test_the_batch_shell_is_one_process():
    # inside the batch script, outside any step: SLURM_PROCID=0 and SLURM_NTASKS=N, but it is one process
    batch = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "n1"}
    e = launch_env(batch)
    assert (e.rank, e.size, e.launcher, e.slurm_restart_count) == (0, 1, "none", 0)
    assert not mpi_launched(batch)


def test_mpi_launchers_require_mpi4py():
    assert mpi_launched({"OMPI_COMM_WORLD_SIZE": "2"}) and mpi_launched({"PMIX_RANK": "0"})
    assert mpi_launched({"PMI_SIZE": "2"}) and not mpi_launched({"SLURM_STEP_NUM_TASKS": "2"})


def test_first_host_of_a_node_list():
    assert first_host("cpu[003-010,12],gpu1") == "cpu003" and first_host("node17") == "node17"
    assert first_host("a1,b2") == "a1"
