"""The reliability campaign's cases (benchmarks/reliability.py): one module per category, each a CASES
list of reliability.Case. `sites` builds the small, valid inputs the cases then break."""
