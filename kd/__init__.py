"""The support code of the scripts in the project's root: the one training loop (engine),
starting and resuming runs (runs), the command line (cli), data, devices, checkpoints, run
records, result tables and figures. The method registry is methods.py, beside the scripts."""
