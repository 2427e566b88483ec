"""bbp_notebooks.api"""
