"""The lab's services: what a request to the lab does, whoever asks (the API's routes, the CLI).

`runs` submits runs, evaluations and sweeps (validation, the server's limits, quotas, references,
commit-then-enqueue) and changes them; `panels` reads and queues robustness panels; `studies` expands,
queues and reports studies and the leaderboard. They raise `labcore.errors.Refused`, never HTTP types;
every status change goes through `labcore.lifecycle`.
"""
