"""The console: what an operator sees. Fleet statistics and the estimate gauges (``stats``),
every rich rendering of the CLI and the demo (``report``: commands compute, this prints), and
the demo run (``demo``: embedded Redis + SQLite, the sample traces, a sampler and a worker).
Imports the rooms it reports on; ``cli`` and ``fleet`` import it.
"""
