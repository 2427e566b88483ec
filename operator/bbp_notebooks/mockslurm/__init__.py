"""bbp_notebooks.mockslurm"""
