"""The offline side: verify, load, push and inventory signed Overleaf image bundles.

Runs alone on the offline host: it imports ``manifests`` (the shared, pure core)
and never the online ``bundler``. The CLI is :mod:`importer.cli` (``overleaf-import``).
"""
