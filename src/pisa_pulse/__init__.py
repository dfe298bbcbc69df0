"""pisa-pulse: live, exact PISA 2018 dashboards from twenty country databases.

Data flows through the sub-packages in this order:

    sources  -> the country databases (embedded PostgreSQL or given servers), synthetic students, traffic
    capture  -> changes out of each source (logical replication, or read-only polling)
    engine   -> per-country aggregates kept incrementally, exactly once
    api      -> each chart's JSON served from memory
    web      -> the dashboard
"""

__version__ = "0.1.0"
