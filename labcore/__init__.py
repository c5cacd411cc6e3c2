"""The torch-free core both tiers share: the run config schema, the method registry, study maths, the
store (models, sessions, queries, migrations), settings, the queue and the `gatlab` command."""
