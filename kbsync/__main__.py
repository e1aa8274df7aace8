"""`python -m kbsync` runs the command line."""

from kbsync.cli.main import main

main()
