"""tfsd's training configs; installed as the package ``tfsd.configs`` (see setup.py)."""
