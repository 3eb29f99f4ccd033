"""Putting a run directory to work: an HTTP service with dynamic batching (``finetunekit serve``)
and batch prediction over folders and tables (``finetunekit predict --input --output``).

The web framework (FastAPI on uvicorn) is imported only by :mod:`finetunekit.use.serving.app`, so
``import finetunekit`` and batch prediction do not need it. See docs/serving.md.
"""
