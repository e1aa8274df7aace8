"""Keeping the model in step without being asked.

    refresh.py  drift: probe the snapshot at HEAD for the facts it should answer
    changes.py  which file-system events concern the facts, debounce, content digest
    watch.py    the observer (inotify, polling fallback), signals, the watch loop
    cycle.py    one watch cycle: plan + apply with the gates, summarised as one event

Library code only; the commands are in kbsync/cli/sync.py.
"""
