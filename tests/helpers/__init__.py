"""Code the tests share that is not a fixture module of its own (oracles of runtime code)."""
