"""Face layer: where processes run. Checks of a run's resources against the machine and the cluster environment
(``resources``), the SLURM job-chain launcher of the study (``slurm``), and the long-lived workers that run the
study's steps on one machine (``workers``)."""
