"""What several test folders (and the benchmarks) share: ports, polling, policies, processes."""
