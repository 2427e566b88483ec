"""bbp-notebooks: Jupyter notebooks on HPC Slurm sites, as Kubernetes resources."""
