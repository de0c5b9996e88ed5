"""``python -m geo_pipeline.cli``: the same as the ``geo-pipeline`` command."""

from . import main

main()
