"""The benchmark harness and transports, installed with shmbus so that
``shmbus bench`` works anywhere; the benchmark programs are in ``bench/``."""
