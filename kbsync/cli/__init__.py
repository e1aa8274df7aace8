"""The `kbsync` command line: parse, call a library function, print (or --json).

    options.py   what every command shares: Env (-C), --json, handle_errors (exit codes)
    printers.py  printers more than one command uses (plan lines, progress, apply events)
    project.py   init, plan, gc          model.py   apply, log, show, audit, ask, rollback,
    sync.py      watch, refresh                     rebase, export, editors, ledger, model
    report.py    report                  bench.py   bench quality / speed
    main.py      the `kbsync` group, every command registered explicitly (COMMANDS)

Adding a command: define it in the module of its topic with `@click.command()`, then

    @json_option
    @pass_env
    @handle_errors
    def show(env: Env, as_json: bool, ...):
        result = some_library_function(env.project(), ...)   # testable without click
        ...

and add it to main.COMMANDS. Library modules are imported inside commands, so
`kbsync --help` starts fast. This package's __init__ imports nothing (a submodule import
runs it, so an import here would be a cycle); the group is `kbsync.cli.main.main`.
"""
