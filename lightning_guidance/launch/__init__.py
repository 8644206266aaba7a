"""Face layer: where processes run. Checks of a run's resources against the machine and the cluster environment
(``resources``), and the SLURM job-chain launcher of the study (``slurm``)."""
