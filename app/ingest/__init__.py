"""Data ingestion: fetch MovieLens, import any release or plain CSV, synthesise data, stats.

The command line (`movierec data ...`) is a thin layer over this package:

- `formats` detects a release and parses its files into validated chunks,
- `loader` writes those chunks into the store in one transaction (PostgreSQL `COPY` into a
  staging table, SQLite batched upserts),
- `importer` ties the two together and reports a summary,
- `fetch` downloads MovieLens-100K (official archive, or the copy inside a PyPI wheel),
- `synth` generates realistic synthetic catalogues and ratings at any scale,
- `stats` summarises the store in SQL.
"""
