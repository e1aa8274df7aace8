"""`python -m kbsync` runs the command line."""

from kbsync.cli import main

main()
