"""Not yet: this stage arrives with issue 5 (see the issue tracker)."""
import sys

if __name__ == "__main__":
    sys.exit("evaluate.py: not yet implemented (issue 5)")
