"""Plain-Python core of the iTwin event sync app: settings, tokens, the iTwin Platform client, commands,
rules and outcomes. Nothing here imports Azure Functions, so all of it is testable without the host."""

__version__ = "0.1.0"
PROJECT = "itwin-event-sync"
