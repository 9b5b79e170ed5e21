"""Fixture: a module in a worker directory without a worker class."""
VALUE = 1
