"""Side-by-side quality benchmarks: one entry point per table (see each module), a shared runner."""
