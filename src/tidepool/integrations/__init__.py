"""Bridges between tidepool and web frameworks and toolkits (optional extras).

- :mod:`tidepool.integrations.starlette`: Starlette and FastAPI (``pip install
  'tidepool[starlette]'`` or ``'tidepool[fastapi]'``).
- :mod:`tidepool.integrations.litestar`: Litestar (``pip install 'tidepool[litestar]'``).
- :mod:`tidepool.integrations.sqlalchemy`: SQLAlchemy (``pip install 'tidepool[sqlalchemy]'``).

Importing this package needs nothing beyond tidepool itself; each module above imports its
framework and fails with an ``ImportError`` naming the extra to install when it is missing.
"""
