"""`python -m kbsync.cli`: the same as the `kbsync` command."""

from kbsync.cli.main import main

if __name__ == "__main__":
    main()
