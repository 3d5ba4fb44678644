"""imgflow's benchmarks: ``make bench`` runs ``bench/run.sh``. See bench/README.md."""
