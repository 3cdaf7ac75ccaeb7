"""roomcast benchmarks: `python -m benches --help`."""
