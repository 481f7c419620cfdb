"""`python -m relu_doctor` runs the command line."""

from relu_doctor.cli import main

if __name__ == "__main__":
    main()
