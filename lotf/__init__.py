"""lotf: learning-on-the-fly of machine-learned interatomic potentials."""
