"""Fixture: a worker module that fails to import."""
import no_such_module_anywhere  # noqa: F401
