"""bbp_notebooks.hub"""
