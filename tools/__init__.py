"""Developer tools that are not part of the app: never deployed (.funcignore)."""
