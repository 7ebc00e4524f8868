"""Analysis of finished (or partial) studies: probe-set feature analysis, aggregation, reports."""
