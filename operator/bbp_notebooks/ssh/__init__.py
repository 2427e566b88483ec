"""bbp_notebooks.ssh"""
