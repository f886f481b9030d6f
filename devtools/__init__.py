"""Development tooling the product never imports: a local farm of processes (``local-up``),
the fault-injection run (``chaos``), fault proxies and process helpers for tests and benchmarks."""
