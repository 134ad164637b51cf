"""trackmw's benchmarks: ``make bench`` (``python -m bench``).

One process run builds every variant (the bare apps, the apps with trackmw, the peers
and the floors), interleaves them over several rounds, and prints the medians with
their ratios to the baseline measured in the same run; ``bench/results.json`` keeps
the figures. Sections: ``inprocess`` (ASGI/WSGI apps called directly), ``wire``
(uvicorn and gunicorn on 127.0.0.1, driven by ``wrk``), ``ua`` (cold User-Agent
classification), ``stores`` (write rates and bytes per buffered event, from
``bench.stores``) and ``report`` (the 30-day report over 1,000,000 SQLite events, from
``bench.report_1m``).
"""
