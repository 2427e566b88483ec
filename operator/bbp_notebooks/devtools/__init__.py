"""bbp_notebooks.devtools"""
