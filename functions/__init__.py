"""Blueprints: thin triggers that parse, call `shared`, and map the result."""
