"""The loop's checks of the product that are not pytest: BDD, Pact, conformance, metrics lint,
schema regen, determinism, mutation testing, the soak, the fit check and the deploy matrix.
"""
