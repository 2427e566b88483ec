"""bbp_notebooks.operator"""
