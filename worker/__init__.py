"""The worker side: the PyTorch core (worker/gat/) and the Celery tasks that run it for the lab.

OpenMP threads that wait by spinning (libgomp's default) turn a CPU shared with other workers or
jobs into a crawl: on 2 busy cores a 15-second robustness panel took over 10 minutes. Passive
waiting costs little when the cores are free, so a worker's threads sleep while they wait unless
the environment says otherwise. It must be set before torch loads OpenMP, hence here.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
