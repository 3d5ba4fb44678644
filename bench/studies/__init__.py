"""One-off studies: what a question needed measured once, with their dated results in
bench/studies/README.md. Not part of ``make bench``; each module's docstring says how to run it."""
