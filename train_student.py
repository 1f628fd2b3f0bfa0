"""Not yet: this stage arrives with issue 3 (see the issue tracker)."""
import sys

if __name__ == "__main__":
    sys.exit("train_student.py: not yet implemented (issue 3)")
