"""GAT Lab core: a plain PyTorch library for gradient adversarial training.

Imports nothing from FastAPI, Celery, SQLAlchemy or `backend`; reports through a recorder.
"""
