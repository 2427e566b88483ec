"""bbp_notebooks.slurm"""
