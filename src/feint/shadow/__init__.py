"""The shadow evaluation service: Sigma rules proven on recorded traffic before they go live.

Layout (pure core, I/O at the edges):

``rules/``      Sigma parsing, field mapping, engine 1 (per-request matcher), engine 2 (SQL)
``record``      the request record both engines read
``ingest/``     logs (combined, W3C, JSON lines) to a Parquet dataset: vectorised, reference, schema
``labels``      the ``id,label`` CSV to a table
``metrics``     confusion-matrix metrics and AUC; ``stats`` McNemar, chi-square, bootstrap
``decision``    thresholds, decision, risk, checks
``evaluate``    production vs candidate over a dataset: the report (``schema`` documents it)
``report``      the HTML page; ``cli`` the ``feint shadow`` commands; ``crs`` CRS test requests
``synth``       synthetic traffic for tests and benchmarks
"""
