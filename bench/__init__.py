"""shmbus benchmarks: programs, not tests.  See bench/README.md."""
