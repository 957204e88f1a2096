"""Traffic logs to Parquet datasets: nginx/Apache combined and common, W3C extended (IIS), JSON lines.

``pipeline``   ``ingest``: files and globs to one dataset, the one path of CLI, evaluation and server
``blocks``     a file (gzip or plain) as blocks of numbered lines, bounded memory
``fast``       the vectorised parsers (DuckDB), per block: combined/common, W3C extended
``jsonl``      the vectorised JSON-lines parser (DuckDB), per block
``reference``  the line-by-line parsers: the reference, and the fallback for refused lines
``dataset``    the Parquet layout and conversions between records and Arrow
"""

from feint.shadow.ingest.pipeline import IngestProgress, expand_paths, ingest
from feint.shadow.ingest.reference import EXAMPLES_MAX, IngestReport, LineProblem

__all__ = ["EXAMPLES_MAX", "IngestProgress", "IngestReport", "LineProblem", "expand_paths", "ingest"]
