"""The controller's database layer: typed models, engines and migrations."""

import logging

# Alembic announces each of its plugins at INFO when it is first imported; only the
# migrations it runs are news. Set here, before any module of this package imports alembic.
logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
