"""Slurm as data: argv builders, output parsers and the batch-script template. No I/O here."""
