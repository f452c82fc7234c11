"""saexplain's maintained benchmarks: `python -m bench` lists them, `python -m bench NAME [options]` runs one,
`python -m bench NAME --report` prints its figures from its committed raw file (bench/results/)."""
