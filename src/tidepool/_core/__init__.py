"""The I/O-free heart of the pool: state, decisions, bookkeeping.

Nothing here awaits, blocks or touches a connection: every method is one atomic step that
changes the state and returns what the caller (a pool shell) must do next.
"""
