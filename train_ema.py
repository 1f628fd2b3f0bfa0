"""Not yet: this stage arrives with issue 4 (see the issue tracker)."""
import sys

if __name__ == "__main__":
    sys.exit("train_ema.py: not yet implemented (issue 4)")
