"""Helpers that the tests and the benchmark share: free ports, waiting, starting and stopping servers."""
